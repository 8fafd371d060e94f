"""`edgeops monitor`: subscribe to the agents' telemetry, store it, evaluate drift, send alerts.

Threads, and why:
- paho's network loop only enqueues each message (the callback must never wait on a database);
- one ingestion worker parses, validates and stores messages in batches (up to ``batch_size``
  messages or ``batch_delay`` seconds: one transaction per batch) and then acknowledges them;
- one evaluator (edgeops/fleet/evaluation.py) runs drift detection every ``evaluate_interval``
  seconds on in-memory counts over the horizon, with its own Store (Stores are single-thread).

Nothing is lost on a crash: the session is persistent (fixed client id, MQTT v5 clean_start
False with a long session expiry), subscriptions are QoS 1, and acknowledgements are manual:
a PUBACK goes out only after the batch holding the message was committed. A crash between
receipt and commit leaves the message unacknowledged, and the broker delivers it again.
Duplicates are harmless: the store ignores a (device_id, seq) pair it already holds.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .broker import BrokerURL
from .evaluation import Evaluator, EvaluatorConfig
from .horizon import EXTRAS, Counted, HorizonCounts, Layout, counted, extras_vector
from .pool import Parsed, ParserPool, default_workers
from .references import Reference
from .store import StoreError, open_store

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue this long while we are away
RECEIVE_MAXIMUM = 3000  # unacknowledged messages in flight to us: batches being parsed, committed and collected
KINDS = ("status", "heartbeat", "telemetry")
MAX_BUNDLES = 1000  # bundle ids whose layout (or lack of one) the monitor remembers


@dataclass(frozen=True)
class MonitorConfig:
    broker: BrokerURL
    db_url: str
    topic_prefix: str = "edgeops"
    client_id: str = "edgeops-monitor"
    share: str | None = None
    ca_file: str | None = None
    batch_size: int = 500
    batch_delay: float = 0.2
    parse_workers: int = field(default_factory=default_workers)  # worker processes (pool.py); 0: in the ingest thread
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)


class Monitor:
    def __init__(self, config: MonitorConfig, references: dict[str, Reference] | None = None,
                 alerts=None, log: Callable[[str], None] = print):
        self.config = config
        self.references = dict(references or {})
        self.alerts = alerts
        self.log = log
        self.stats = Counter()
        self.quarantined = Counter()
        self.horizon = HorizonCounts(config.evaluator.horizon_s)
        self.lock = threading.Lock()  # guards self.horizon and self.layouts
        self.layouts: dict[str, Layout | None] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._worker: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self.evaluator: Evaluator | None = None
        self.store = None
        self.parser: ParserPool | None = None
        self._fallback_logged = float("-inf")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.store = open_store(self.config.db_url)
        for ref in self.references.values():
            self.store.save_reference(ref.bundle_id, ref.manifest, ref.refstats)
        self._warm_up()
        self.parser = ParserPool(self.config.topic_prefix, self.config.parse_workers, self.log, self.config.db_url)
        self.parser.warm_up()
        self.evaluator = Evaluator(self, self.config.evaluator)
        self._worker = threading.Thread(target=self._work, name="monitor-ingest", daemon=True)
        self._worker.start()
        self._client = self._make_client()
        self._client.connect_async(self.config.broker.host, self.config.broker.port, keepalive=30,
                                   clean_start=False, properties=self._connect_properties())
        self._client.loop_start()
        self.evaluator.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Flush and acknowledge what was received, then disconnect (SIGTERM / SIGINT)."""
        if self.evaluator is not None:
            self.evaluator.stop()
        # From here on messages are not enqueued: they stay unacknowledged and the broker sends
        # them again to the next session. (Unsubscribing would drop the persistent subscription,
        # and with it whatever agents publish while the monitor is down.)
        self._stop.set()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self.parser is not None:
            self.parser.close()
        if self.alerts is not None:
            self.alerts.stop()
        if self.store is not None:
            self.store.close()

    # -- MQTT --------------------------------------------------------------------------------

    def _topics(self) -> list[str]:
        base = [f"{self.config.topic_prefix}/v1/devices/+/{kind}" for kind in KINDS]
        if self.config.share:
            return [f"$share/{self.config.share}/{t}" for t in base]
        return base

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        # MQTT v5 receive maximum: Mosquitto otherwise keeps at most 20 (max_inflight_messages)
        # unacknowledged messages in flight, and with acks held until commit that caps a batch.
        props.ReceiveMaximum = max(RECEIVE_MAXIMUM, 2 * self.config.batch_size)
        return props

    def _make_client(self) -> mqtt.Client:
        broker = self.config.broker
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                             client_id=self.config.client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        client.manual_ack_set(True)
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(ca_certs=self.config.ca_file)
        client.reconnect_delay_set(1, 60)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.log(f"broker refused the connection: {reason_code}")
            return
        if not flags.session_present:
            self.log("new broker session (no messages were queued for this monitor)")
        client.subscribe([(t, 1) for t in self._topics()])
        self._connected.set()
        self.stats["connects"] += 1

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            self.log(f"disconnected from the broker ({reason_code}); reconnecting")

    def _on_message(self, client, userdata, message) -> None:
        # Only enqueue: the network loop must keep reading while the worker commits.
        if self._stop.is_set():
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = repr(message._topic)  # MQTT forbids it; keep a printable form for the quarantine
        self._queue.put((topic, message.payload, message.mid, message.qos, time.time()))

    def publish(self, topic: str, payload: bytes) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos=1)

    def mqtt_status(self) -> dict:
        return {"connected": self._connected.is_set(), "broker": self.config.broker.url,
                "client_id": self.config.client_id, "share": self.config.share,
                "received": self.stats["received"], "stored": self.stats["windows_new"],
                "quarantined": sum(self.quarantined.values()), "queue": self._queue.qsize()}

    # -- ingestion ---------------------------------------------------------------------------

    def _work(self) -> None:
        # Two stages: while the parser processes decode batch N+1, this thread stores and
        # acknowledges batch N.
        pending = None
        while True:
            batch, done = self._next_batch(quick=pending is not None)
            job = self.parser.submit([(t, p, r) for t, p, _, _, r in batch]) if batch else None
            if pending is not None:
                self._commit_with_retry(*pending)
            pending = (batch, job) if batch else None
            if done:
                if pending is not None:
                    self._commit_with_retry(*pending)
                return

    def _next_batch(self, quick: bool = False) -> tuple[list, bool]:
        """Up to batch_size items; waits at most batch_delay once the first one is here.

        ``quick``: a parsed batch is waiting to be committed, so do not idle long for a new one.
        """
        try:
            first = self._queue.get(timeout=0.02 if quick else 0.5)
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.config.batch_delay
        while len(batch) < self.config.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # A short idle gap ends the batch early: when messages trickle in there is no
                # reason to hold their acknowledgement for the whole batch_delay.
                item = self._queue.get(timeout=min(remaining, 0.02))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _commit_with_retry(self, batch: list, job) -> None:
        """Store the batch, then acknowledge it; on a database error retry, acknowledging nothing."""
        parsed = job.result()
        delay = 0.5
        while True:
            try:
                try:
                    self.ingest(batch, parsed)
                except _store_errors():
                    raise
                except Exception as exc:  # noqa: BLE001 - a message that trips a bug must not stop ingestion
                    self.log(f"error: ingesting a batch failed ({type(exc).__name__}: {exc}); isolating the message")
                    self._isolate(batch, parsed)
                break
            except _store_errors() as exc:
                # Nothing is acknowledged: the messages stay the broker's until a commit succeeds.
                self.stats["store_errors"] += 1
                self.log(f"storing a batch failed ({type(exc).__name__}: {exc}); retrying in {delay:g} s")
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
        for _, _, mid, qos, _ in batch:
            if qos > 0 and self._client is not None:
                self._client.ack(mid, qos)

    def _isolate(self, batch: list, parsed: Parsed) -> None:
        """Store the batch message by message; quarantine those that fail (reason monitor_error)."""
        for item, result in zip(batch, parsed.results):
            try:
                self.ingest([item], Parsed([result]))
            except _store_errors():
                raise
            except Exception:  # noqa: BLE001 - see _commit_with_retry
                topic, payload, _, _, received = item
                self.store.quarantine(topic, bytes(payload), "monitor_error", received)
                self.quarantined["monitor_error"] += 1

    def ingest(self, batch: list, parsed: Parsed | None = None) -> None:
        """Store and count one batch of (topic, payload, mid, qos, received) items.

        ``parsed``: the batch's ParserPool result, parsed here when not given. A window comes as
        (Counted, Message | None): with a Message it is stored here, without one a worker process
        already stored it and it is only counted.
        """
        windows, unstored, heartbeats, statuses, rejected = [], [], [], [], []
        if parsed is None:
            parsed = self.parser.parse([(topic, payload, received) for topic, payload, _, _, received in batch])
        if parsed.errors:
            self._log_store_fallback(parsed.errors[0])
        for (topic, payload, _, _, received), (first, second) in zip(batch, parsed.results):
            if first is None:
                rejected.append((topic, bytes(payload), second, received))
            elif type(first) is Counted:
                windows.append(first)
                if second is not None:  # not stored by a worker: store it here
                    unstored.append(second)
            elif first.kind == "heartbeat":
                heartbeats.append(first)
            else:
                statuses.append(first)
        new = parsed.new + (self.store.insert_windows(unstored) if unstored else 0)
        if heartbeats:
            self.store.record_heartbeats(heartbeats)
        for message in statuses:
            self.store.record_status(message)
        if rejected:
            self.store.quarantine_many(rejected)
            self.quarantined.update(reason for _, _, reason, _ in rejected)
        self.stats["received"] += len(batch)
        self.stats["windows"] += len(windows)
        self.stats["windows_new"] += new
        self._aggregate(windows)

    def _log_store_fallback(self, error: str) -> None:
        """A parser process could not store its windows: the monitor stores them (say so, once a minute)."""
        self.stats["worker_store_fallbacks"] += 1
        now = time.monotonic()
        if now - self._fallback_logged > 60:
            self._fallback_logged = now
            self.log(f"a parser process could not store its windows ({error[:200]}); storing them here")

    def _aggregate(self, windows: list[Counted]) -> None:
        """Add each window not counted before to the horizon's counts."""
        keep = []
        for w in windows:
            if w.role == "shadow":
                continue  # a shadow runs on the same requests: its inputs would count twice
            layout = self._layout(w.bundle_id)
            if layout is not None and (w.vector is None or w.vector.size == layout.size):
                keep.append((layout, w))
        if not keep:
            return
        # Windows without vectors (parsed here, or their bundle unknown to the worker) get theirs
        # in one array per batch (a row per window) instead of two small arrays per window.
        slow = [(layout, w) for layout, w in keep if w.vector is None]
        if slow:
            width = max(layout.size for layout, _ in slow)
            counts = np.zeros((len(slow), width), dtype=np.int64)
            extras = np.zeros((len(slow), EXTRAS), dtype=np.float64)
            for i, (layout, w) in enumerate(slow):
                layout.vector(w.payload, w.packed, counts[i, :layout.size])
                extras_vector(w.payload, extras[i])
            computed = iter(zip(counts, extras))
        with self.lock:
            for layout, w in keep:
                if w.vector is None:
                    vector, extra = next(computed)
                    vector = vector[:layout.size]
                else:
                    vector, extra = w.vector, w.extras
                if self.horizon.is_new(w.device_id, w.seq, w.instance):
                    self.horizon.add(w.bundle_id, w.device_id, w.end, vector, extra)

    def _layout(self, bundle_id: str) -> Layout | None:
        if bundle_id not in self.layouts:
            ref = self.reference(bundle_id, self.store)
            layout = Layout(ref.refstats) if ref is not None else None
            with self.lock:
                if layout is None and len(self.layouts) >= MAX_BUNDLES:
                    # Windows with made-up bundle ids must not grow this without end: forget the
                    # unknown ones (looked up again if they come back), keep the known.
                    self.layouts = {k: v for k, v in self.layouts.items() if v is not None}
                self.layouts[bundle_id] = layout
            if layout is None:
                self.stats["unknown_bundles"] += 1
                n = self.stats["unknown_bundles"]
                if n <= 10 or n % 1000 == 0:  # a flood of made-up ids must not flood the log
                    self.log(f"no reference statistics for bundle {bundle_id[:12]}...: its windows are stored "
                             "but not checked for drift (pass its .edgepkg with --bundle or --registry)"
                             + (f"; {n} such bundles so far" if n > 10 else ""))
        return self.layouts[bundle_id]

    def reference(self, bundle_id: str, store) -> Reference | None:
        ref = self.references.get(bundle_id)
        if ref is None:
            saved = store.reference(bundle_id)
            if saved is not None:
                model = saved["manifest"].get("model") or {}
                ref = Reference(bundle_id, str(model.get("name", "")), str(model.get("version", "")),
                                saved["manifest"], saved["refstats"])
                self.references[bundle_id] = ref
        return ref

    def _warm_up(self) -> None:
        """Rebuild the horizon's counts from the store, so a restart does not reset detection."""
        since = time.time() - self.config.evaluator.horizon_s
        rows = self.store.windows(since=since)

        self._aggregate([counted(p["device_id"], p) for p in rows])
        if rows:
            self.log(f"loaded {len(rows)} stored window(s) of the last {self.config.evaluator.horizon_s:g} s")


def _store_errors() -> tuple[type[BaseException], ...]:
    """Database errors worth retrying: SQLite's, and psycopg's when it is loaded."""
    import sqlite3
    import sys

    errors: list[type[BaseException]] = [StoreError, sqlite3.Error, OSError]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        errors.append(psycopg.Error)
    return tuple(errors)
