"""MQTT side of the agent: broker URLs, topic names, and the publisher that drains the outbox.

Wire contract: docs/telemetry.md. Windows go out at QoS 1 and leave the outbox only after the
broker's PUBACK; status is retained (``online`` on connect, ``offline`` as last will and on a clean
stop); heartbeats are sent while connected and never queued.

Threads: paho's network thread runs the callbacks; they only record what happened and wake the
sender thread, which does all outbox I/O and publishing. Keeping SQLite (and its fsyncs) out of
the network thread keeps PUBACKs and keepalives flowing, and lets acks be deleted in batches.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgeops.agent.outbox import Outbox
from edgeops.errors import InputFileError, UsageError, first_line

DEVICE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
TOPIC_KINDS = ("status", "heartbeat", "telemetry")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
URL_HINT = "write the broker as mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS), e.g. mqtt://127.0.0.1:1883"


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    keepalive: int = 30

    @property
    def url(self) -> str:
        """For messages: never shows the password."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_broker_url(url: str, username=None, password=None, ca_file=None) -> BrokerConfig:
    """mqtt://host[:1883] or mqtts://host[:8883], ``user:pass@`` allowed; options must not contradict it."""
    if not isinstance(url, str) or "://" not in url:
        raise UsageError(f"the broker URL {url!r} has no scheme", URL_HINT)
    parts = urlsplit(url.strip())
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()   # no credentials in messages
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UsageError(f"unsupported broker URL scheme {parts.scheme!r} in {shown}", URL_HINT)
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"the broker URL {shown} has an invalid port", URL_HINT) from exc
    if not parts.hostname:
        raise UsageError(f"the broker URL {shown} has no host", URL_HINT)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"the broker URL {shown} has a path or query; a broker is only a host and port",
                         URL_HINT)
    if port == 0:
        raise UsageError(f"the broker URL {shown} has port 0", URL_HINT)
    user = _one_value("user name", username, None if parts.username is None else unquote(parts.username))
    secret = _one_value("password", password, None if parts.password is None else unquote(parts.password))
    if secret is not None and user is None:
        raise UsageError("a broker password was given without a user name",
                         "give the user name too (--mqtt-username or mqtt://USER:PASS@HOST)")
    tls = scheme == "mqtts"
    if ca_file is not None:
        if not tls:
            raise UsageError(f"a CA file was given for the plain-text broker {shown}",
                             "use mqtts://HOST[:8883] for TLS, or drop the CA file")
        if not os.path.isfile(ca_file):
            raise InputFileError(f"the CA file {ca_file} does not exist",
                                 "give the PEM file of the CA that signed the broker's certificate")
        ca_file = str(ca_file)
    return BrokerConfig(host=parts.hostname, port=port or DEFAULT_PORTS[scheme], tls=tls,
                        username=user, password=secret, ca_file=ca_file)


def _one_value(what: str, option, from_url):
    if option is not None and from_url is not None and option != from_url:
        raise UsageError(f"two different broker {what}s: one in the URL, one as an option",
                         f"give the {what} once")
    return option if option is not None else from_url


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not re.fullmatch(DEVICE_ID_PATTERN, device_id):
        raise UsageError(f"invalid device id {device_id!r}",
                         "use 1 to 64 characters from A-Z a-z 0-9 . _ - (no spaces, no '/')")
    return device_id


def check_topic_prefix(prefix: str) -> str:
    """A prefix must name a plain topic path: no wildcards, no empty levels, not a $SYS-like topic."""
    if (not isinstance(prefix, str) or not prefix or prefix.startswith("$") or "//" in prefix
            or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#\0")):
        raise UsageError(f"invalid MQTT topic prefix {prefix!r}",
                         "use plain topic levels such as 'edgeops' or 'site-1/edgeops' "
                         "(no + or #, no leading $ or /, no empty levels)")
    return prefix


def topic(prefix: str, device_id: str, kind: str) -> str:
    """PREFIX/v1/devices/ID/KIND, KIND one of status, heartbeat, telemetry."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"topic kind must be one of {TOPIC_KINDS}, not {kind!r}")
    return f"{check_topic_prefix(prefix)}/v1/devices/{check_device_id(device_id)}/{kind}"


def encode_json(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")


class TelemetryPublisher:
    """Publishes the outbox's windows (QoS 1), the retained status and heartbeats to one broker."""

    def __init__(self, broker: BrokerConfig, device_id: str, outbox: Outbox, *, topic_prefix: str = "edgeops",
                 status: Callable[[str], dict], heartbeat: Callable[[], dict], heartbeat_interval: float = 30.0,
                 client_id: str | None = None, log: Callable[[str], None] | None = None,
                 max_inflight: int = 50):
        if not heartbeat_interval > 0:
            raise UsageError(f"the heartbeat interval must be positive, got {heartbeat_interval!r}",
                             "give --heartbeat-interval in seconds, e.g. 30")
        self.broker = broker
        self._outbox = outbox
        self._status, self._heartbeat = status, heartbeat
        self._interval = float(heartbeat_interval)
        self._log = log or logging.getLogger("edgeops.agent.mqtt").info
        self._max_inflight = max(1, int(max_inflight))
        self._status_topic = topic(topic_prefix, device_id, "status")
        self._heartbeat_topic = topic(topic_prefix, device_id, "heartbeat")
        # Shared with paho's thread, guarded by _wake.
        self._wake = threading.Condition()
        self._woken = self._stopping = self._connected = self._started = False
        self._generation = 0
        self._connects = 0
        self._acks: collections.deque = collections.deque()   # (mid, ok) from on_publish
        self._progress = threading.Condition()                 # flush() waits on it
        # Sender thread only.
        self._inflight: dict[int, int] = {}   # paho mid -> window seq
        self._stale: set[int] = set()         # mids paho resends after a reconnect
        self._stale_since = 0.0
        self._cursor = 0                      # highest seq handed to paho on this run
        self._next_heartbeat = 0.0
        self._published = self._acked = 0
        self._sender: threading.Thread | None = None
        # A fixed client id lets a restarted agent take over its old session at once, so the broker
        # fires the old will before the new "online", not seconds after it.
        self._client = self._make_client(client_id or f"edgeops-agent-{device_id}")

    def _make_client(self, client_id: str) -> paho.Client:
        # clean_session=True: the durable state is the outbox, not a broker session. The agent
        # subscribes to nothing, and a persistent session would only hold our unacked QoS 1
        # windows, which paho keeps in memory while we run and the outbox resends after a restart.
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                             protocol=paho.MQTTv311)
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            try:
                client.tls_set(ca_certs=self.broker.ca_file)
            except OSError as exc:   # ssl.SSLError is an OSError
                raise InputFileError(f"cannot use the CA file {self.broker.ca_file}: {first_line(exc)}",
                                     "give a PEM file with the CA certificate that signed the broker's") from exc
        client.reconnect_delay_set(1, 60)
        # Our own limit bounds the windows; the margin leaves room for status and heartbeats.
        client.max_inflight_messages_set(self._max_inflight + 10)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # -- public --------------------------------------------------------------------------------

    def start(self) -> None:
        with self._wake:
            if self._started:
                return
            self._started = True
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive)
        self._client.loop_start()
        self._sender = threading.Thread(target=self._run, name="edgeops-telemetry-sender", daemon=True)
        self._sender.start()
        self._log(f"connecting to the MQTT broker {self.broker.url}")

    def notify(self) -> None:
        self._wakeup()

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._progress:
            while True:
                if self._outbox.stats()["pending"] == 0:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(min(remaining, 0.5))

    def stop(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._wake:
            if self._stopping:
                return
            self._stopping = True
            self._wake.notify_all()
        sender_done = True
        if self._sender is not None:
            self._sender.join(max(0.1, deadline - time.monotonic()))
            sender_done = not self._sender.is_alive()
        if self._connected:
            try:
                info = self._client.publish(self._status_topic, encode_json(self._status("offline")),
                                            qos=1, retain=True)
                info.wait_for_publish(max(0.1, min(3.0, deadline - time.monotonic())))
            except Exception as exc:   # stop must finish: the broker's last will covers a lost offline
                self._log(f"could not publish the offline status: {first_line(exc)}")
        if sender_done:
            self._safely(self._drain_acks)   # PUBACKs that came in while we stopped
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))
        with self._wake:
            self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> dict:
        return {"connected": self._connected, "published": self._published, "acked": self._acked,
                "reconnects": max(0, self._connects - 1)}

    # -- paho callbacks (network thread): record, wake the sender, never raise -----------------

    def _on_pre_connect(self, client, userdata) -> None:
        # A fresh will at each connect, so its ts is the connect's (docs/telemetry.md).
        try:
            client.will_set(self._status_topic, encode_json(self._status("offline")), qos=1, retain=True)
        except Exception as exc:
            self._log(f"could not prepare the last-will status: {first_line(exc)}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self._log(f"the MQTT broker {self.broker.url} refused the connection: {reason_code}")
                return
            client.publish(self._status_topic, encode_json(self._status("online")), qos=1, retain=True)
        except Exception as exc:
            self._log(f"could not publish the online status: {first_line(exc)}")
        with self._wake:
            self._connected = True
            self._connects += 1
            self._generation += 1
            self._woken = True
            self._wake.notify_all()
        self._log(f"connected to the MQTT broker {self.broker.url}")

    def _on_connect_fail(self, client, userdata) -> None:
        self._log(f"cannot connect to the MQTT broker {self.broker.url}; retrying (backoff 1 s .. 60 s)")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._wake:
            was_connected, self._connected = self._connected, False
            stopping = self._stopping
        if was_connected and not stopping:
            self._log(f"lost the MQTT broker {self.broker.url} ({reason_code}); reconnecting")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append((mid, not reason_code.is_failure))
        self._wakeup()

    def _wakeup(self) -> None:
        with self._wake:
            self._woken = True
            self._wake.notify_all()

    # -- sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        seen_generation = 0
        while True:
            with self._wake:
                if not (self._woken or self._stopping):
                    self._wake.wait(self._tick())
                self._woken = False
                if self._stopping:
                    return
                connected, generation = self._connected, self._generation
            ok = self._safely(self._drain_acks)
            if connected:
                if generation != seen_generation:
                    seen_generation = generation
                    self._new_connection()
                beat_ok = self._safely(self._maybe_heartbeat)
                ok = self._safely(self._fill) and beat_ok and ok
            if not ok:   # e.g. the disk is full: do not spin, try again shortly
                with self._wake:
                    self._wake.wait(1.0)

    def _safely(self, step: Callable[[], None]) -> bool:
        try:
            step()
            return True
        except Exception as exc:   # the sender must survive outbox and callback errors
            self._log(f"telemetry sender: {type(exc).__name__}: {first_line(exc)}")
            return False

    def _tick(self) -> float:
        if not self._connected:
            return 1.0
        return max(0.05, min(1.0, self._next_heartbeat - time.monotonic()))

    def _new_connection(self) -> None:
        # paho resends its unacknowledged QoS 1 messages itself after a reconnect (DUP flag, same
        # mid). Newer windows wait until those are acked, so the broker sees seqs in order.
        now = time.monotonic()
        self._stale = set(self._inflight)
        self._stale_since = now
        self._next_heartbeat = now + self._interval

    def _drain_acks(self) -> None:
        done = []
        while self._acks:
            mid, ok = self._acks.popleft()
            self._stale.discard(mid)
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue          # a status or heartbeat message
            if ok:
                done.append(seq)
            else:
                self._log(f"the broker refused window {seq}; sending it again")
                self._cursor = min(self._cursor, seq - 1)
        if not done:
            return
        try:
            self._outbox.ack_many(done)
        except Exception:
            self._cursor = min(self._cursor, min(done) - 1)   # still stored: send again (a duplicate)
            raise
        self._acked += len(done)
        with self._progress:
            self._progress.notify_all()

    def _maybe_heartbeat(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self._interval
        self._client.publish(self._heartbeat_topic, encode_json(self._heartbeat()), qos=1)

    def _fill(self) -> None:
        if self._stale:
            if time.monotonic() - self._stale_since < 2 * self.broker.keepalive + 10:
                return
            # Never acknowledged after a reconnect: give up on paho's copies and send them again.
            self._log(f"{len(self._stale)} windows were not acknowledged after the reconnect; resending")
            for mid in self._stale:
                seq = self._inflight.pop(mid, None)
                if seq is not None:
                    self._cursor = min(self._cursor, seq - 1)
            self._stale.clear()
        while self._connected and len(self._inflight) < self._max_inflight:
            rows = self._outbox.pending(limit=self._max_inflight, after_seq=self._cursor)
            if not rows:
                return
            in_flight = set(self._inflight.values())
            for seq, window_topic, payload in rows:
                if len(self._inflight) >= self._max_inflight:
                    return
                if seq in in_flight:
                    self._cursor = seq
                    continue
                info = self._client.publish(window_topic, payload, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    self._log(f"could not publish window {seq}: {paho.error_string(info.rc)}")
                    return
                self._cursor = seq
                self._inflight[info.mid] = seq
                self._published += 1
                if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                    return        # paho keeps it and sends it after the reconnect
