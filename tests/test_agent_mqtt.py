"""The MQTT publisher against real Mosquitto brokers: the shared one at 127.0.0.1:1883 for the happy
path and the last will, private ones (own port, own config) for broker outages and TLS."""
from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.agent.mqtt import (BrokerConfig, TelemetryPublisher, check_device_id, parse_broker_url,
                                topic)
from edgeops.agent.outbox import Outbox
from edgeops.errors import InputFileError, UsageError

MOSQUITTO = "/usr/sbin/mosquitto"
SHARED = ("127.0.0.1", 1883)
WAIT = 30.0


def wait_until(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    """A private Mosquitto. Persistence is on only so that the TEST subscriber's session survives a
    restart; the agent uses a clean session, so nothing of its windows is kept by the broker."""

    def __init__(self, directory: Path, extra: str = ""):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nuser root\npersistence true\n"
                             f"persistence_location {self.dir}/\nlog_dest file {self.dir}/broker.log\n"
                             + (extra or "allow_anonymous true\n"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, 20, "the broker")
        assert self.proc.poll() is None, (self.dir / "broker.log").read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # clean: saves the test subscriber's session
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Subscriber:
    """A plain paho subscriber recording every message (topic, qos, retain, payload)."""

    def __init__(self, port: int, topic_filter: str, persistent: bool = False, **tls):
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:12]}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(1, 2)
        if tls:
            self.client.tls_set(ca_certs=tls["ca_file"])
            self.client.username_pw_set(tls["username"], tls["password"])
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(WAIT), "subscriber did not get its SUBACK"

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append(msg)

    def payloads(self, suffix: str) -> list[dict]:
        with self.lock:
            return [json.loads(m.payload) for m in self.messages if m.topic.endswith(suffix) and m.payload]

    def window_seqs(self) -> list[int]:
        return [p["seq"] for p in self.payloads("/telemetry")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def status_payload(device: str):
    return lambda state: {"schema_version": 1, "kind": "status", "device_id": device, "state": state,
                          "ts": time.time()}


def heartbeat_payload(device: str, box: Outbox):
    return lambda: {"schema_version": 1, "kind": "heartbeat", "device_id": device, "ts": time.time(),
                    "outbox": box.stats()}


def append_windows(box: Outbox, prefix: str, device: str, n: int) -> list[int]:
    def build(seq, state):
        return json.dumps({"schema_version": 1, "kind": "window", "device_id": device, "seq": seq,
                           "outbox": state, "pad": "x" * 3000}).encode()
    return [box.append(topic(prefix, device, "telemetry"), build) for _ in range(n)]


def clear_retained(port: int, status_topic: str) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(status_topic, b"", qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_broker_urls():
    assert parse_broker_url("mqtt://127.0.0.1") == BrokerConfig("127.0.0.1", 1883)
    cfg = parse_broker_url("mqtts://user:p%40ss@broker.example:9999")
    assert (cfg.host, cfg.port, cfg.tls, cfg.username, cfg.password) == ("broker.example", 9999, True, "user", "p@ss")
    assert "p@ss" not in cfg.url and "p%40ss" not in cfg.url
    assert parse_broker_url("mqtts://h", username="u", password="pw").port == 8883
    assert parse_broker_url("mqtt://[::1]:1884").host == "::1"
    for bad in ["127.0.0.1:1883", "http://h", "mqtt://", "mqtt://h:notaport", "mqtt://h:70000",
                "mqtt://h/some/path", "mqtt://h?x=1"]:
        with pytest.raises(UsageError) as info:
            parse_broker_url(bad)
        assert info.value.hint
    with pytest.raises(UsageError, match="user name"):
        parse_broker_url("mqtt://a:b@h", username="other")
    with pytest.raises(UsageError, match="without a user name"):
        parse_broker_url("mqtt://h", password="pw")
    with pytest.raises(UsageError, match="plain-text"):
        parse_broker_url("mqtt://h", ca_file=__file__)
    with pytest.raises(InputFileError, match="CA file"):
        parse_broker_url("mqtts://h", ca_file="/nonexistent/ca.pem")


def test_device_ids_and_topics():
    assert check_device_id("pi-kitchen_01.a") == "pi-kitchen_01.a"
    for bad in ["", "a/b", "a+b", "#", "x" * 65, "with space", 7]:
        with pytest.raises(UsageError):
            check_device_id(bad)
    assert topic("edgeops", "d1", "status") == "edgeops/v1/devices/d1/status"
    assert topic("site/x", "d1", "telemetry") == "site/x/v1/devices/d1/telemetry"
    for prefix in ["", "a/+", "#", "/a", "a/", "a//b", "$SYS"]:
        with pytest.raises(UsageError):
            topic(prefix, "d1", "heartbeat")
    with pytest.raises(ValueError):
        topic("edgeops", "d1", "alerts")


def test_publishes_status_windows_and_heartbeats(tmp_path):
    prefix, device = f"test-{uuid.uuid4().hex[:10]}", "dev-happy"
    with Outbox(tmp_path / "buf") as box:      # a previous run left 3 windows behind
        append_windows(box, prefix, device, 3)
    sub = Subscriber(SHARED[1], f"{prefix}/v1/devices/{device}/#")
    box = Outbox(tmp_path / "buf")
    logs: list[str] = []
    pub = TelemetryPublisher(BrokerConfig(*SHARED), device, box, topic_prefix=prefix,
                             status=status_payload(device), heartbeat=heartbeat_payload(device, box),
                             heartbeat_interval=0.3, log=logs.append)
    try:
        pub.start()
        wait_until(lambda: pub.connected, what="connect")
        append_windows(box, prefix, device, 2)
        pub.notify()
        assert pub.flush(WAIT)
        wait_until(lambda: len(sub.window_seqs()) >= 5 and sub.payloads("/heartbeat"), what="windows")
        assert sub.window_seqs() == [1, 2, 3, 4, 5]          # one connection: in order, once each
        assert box.stats() == {"pending": 0, "dropped_total": 0, "last_seq": 5}
        with sub.lock:
            kinds = {m.topic.rsplit("/", 1)[1]: m.qos for m in sub.messages}
        assert kinds == {"status": 1, "telemetry": 1, "heartbeat": 1}   # QoS 1 end to end
        assert sub.payloads("/status")[0]["state"] == "online"
        assert sub.payloads("/heartbeat")[0]["kind"] == "heartbeat"
        # the status is retained: a late subscriber gets it at once
        late = Subscriber(SHARED[1], topic(prefix, device, "status"))
        try:
            wait_until(lambda: late.messages, what="retained status")
            assert late.messages[0].retain and json.loads(late.messages[0].payload)["state"] == "online"
        finally:
            late.close()
        stats = pub.stats()
        assert stats["connected"] and stats["published"] == 5 and stats["acked"] == 5
        pub.stop()
        assert not pub.connected
        wait_until(lambda: [p["state"] for p in sub.payloads("/status")] == ["online", "offline"],
                   what="offline status")
        assert any("connected" in line for line in logs)
    finally:
        pub.stop()
        sub.close()
        box.close()
        clear_retained(SHARED[1], topic(prefix, device, "status"))


def test_broker_outage_loses_no_window(tmp_path):
    prefix, device = f"test-{uuid.uuid4().hex[:10]}", "dev-outage"
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = box = pub = None
    try:
        sub = Subscriber(broker.port, topic(prefix, device, "telemetry"), persistent=True)
        box = Outbox(tmp_path / "buf")
        pub = TelemetryPublisher(BrokerConfig("127.0.0.1", broker.port, keepalive=5), device, box,
                                 topic_prefix=prefix, status=status_payload(device),
                                 heartbeat=heartbeat_payload(device, box), heartbeat_interval=60,
                                 log=lambda line: None)
        pub.start()
        append_windows(box, prefix, device, 5)
        pub.notify()
        assert pub.flush(WAIT)
        wait_until(lambda: len(sub.window_seqs()) >= 5, what="the first windows")

        broker.stop()
        wait_until(lambda: not pub.connected, what="the publisher to notice the outage")
        append_windows(box, prefix, device, 20)
        pub.notify()
        assert not pub.flush(1.0)                     # nobody can acknowledge them
        assert box.stats()["pending"] == 20

        broker.start()                                # same port, same config
        assert pub.flush(WAIT)
        wait_until(lambda: set(sub.window_seqs()) >= set(range(1, 26)), what="the backlog")
        assert set(sub.window_seqs()) == set(range(1, 26))
        assert box.stats() == {"pending": 0, "dropped_total": 0, "last_seq": 25}
        assert pub.stats()["reconnects"] >= 1
    finally:
        if pub is not None:
            pub.stop()
        if sub is not None:
            sub.close()
        if box is not None:
            box.close()
        broker.stop()


def test_windows_without_puback_survive_an_agent_restart(tmp_path):
    """A frozen broker (SIGSTOP) takes the windows off the socket but never acknowledges them."""
    prefix, device = f"test-{uuid.uuid4().hex[:10]}", "dev-frozen"
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = box = pub = None

    def publisher():
        return TelemetryPublisher(BrokerConfig("127.0.0.1", broker.port), device, box, topic_prefix=prefix,
                                  status=status_payload(device), heartbeat=heartbeat_payload(device, box),
                                  heartbeat_interval=60, log=lambda line: None)
    try:
        sub = Subscriber(broker.port, topic(prefix, device, "telemetry"), persistent=True)
        box = Outbox(tmp_path / "buf")
        pub = publisher()
        pub.start()
        wait_until(lambda: pub.connected, what="connect")
        os.kill(broker.proc.pid, signal.SIGSTOP)
        append_windows(box, prefix, device, 5)
        pub.notify()
        wait_until(lambda: pub.stats()["published"] == 5, what="the windows to be sent")
        assert not pub.flush(1.0)
        pub.stop(timeout=2)                           # the agent stops before any PUBACK came
        assert pub.stats()["acked"] == 0
        box.close()
        box = Outbox(tmp_path / "buf")                # ... and starts again
        assert [seq for seq, _, _ in box.pending()] == [1, 2, 3, 4, 5]
        os.kill(broker.proc.pid, signal.SIGCONT)
        pub = publisher()
        pub.start()
        assert pub.flush(WAIT)
        wait_until(lambda: set(sub.window_seqs()) >= {1, 2, 3, 4, 5}, what="the resent windows")
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)
        if pub is not None:
            pub.stop()
        if sub is not None:
            sub.close()
        if box is not None:
            box.close()
        broker.stop()


def test_windows_in_flight_when_the_connection_drops_are_sent_again(tmp_path):
    """The broker freezes with windows in flight; the keepalive drops the connection; after the
    reconnect the unacknowledged windows go again (paho's QoS 1 resend) and newer ones follow."""
    prefix, device = f"test-{uuid.uuid4().hex[:10]}", "dev-inflight"
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = box = pub = None
    logs: list[str] = []
    try:
        sub = Subscriber(broker.port, topic(prefix, device, "telemetry"), persistent=True)
        box = Outbox(tmp_path / "buf")
        pub = TelemetryPublisher(BrokerConfig("127.0.0.1", broker.port, keepalive=2), device, box,
                                 topic_prefix=prefix, status=status_payload(device),
                                 heartbeat=heartbeat_payload(device, box), heartbeat_interval=60, log=logs.append)
        pub.start()
        wait_until(lambda: pub.connected, what="connect")
        os.kill(broker.proc.pid, signal.SIGSTOP)
        append_windows(box, prefix, device, 5)
        pub.notify()
        wait_until(lambda: pub.stats()["published"] == 5, what="the windows to be sent")
        wait_until(lambda: not pub.connected, what="the keepalive to drop the connection")
        append_windows(box, prefix, device, 3)
        pub.notify()
        assert box.stats()["pending"] == 8
        os.kill(broker.proc.pid, signal.SIGCONT)
        assert pub.flush(WAIT)
        wait_until(lambda: set(sub.window_seqs()) >= set(range(1, 9)), what="all windows")
        assert pub.stats()["reconnects"] >= 1 and pub.stats()["acked"] == 8
        assert not any("not acknowledged after the reconnect" in line for line in logs), logs
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)
        if pub is not None:
            pub.stop()
        if sub is not None:
            sub.close()
        if box is not None:
            box.close()
        broker.stop()


def test_unreachable_broker_does_not_raise(tmp_path):
    logs: list[str] = []
    with Outbox(tmp_path) as box:
        append_windows(box, "test", "dev-lonely", 2)
        pub = TelemetryPublisher(BrokerConfig("127.0.0.1", free_port()), "dev-lonely", box,
                                 topic_prefix="test", status=status_payload("dev-lonely"),
                                 heartbeat=heartbeat_payload("dev-lonely", box), log=logs.append)
        pub.start()
        wait_until(lambda: any("cannot connect" in line for line in logs), what="a logged failure")
        assert not pub.connected and not pub.flush(0.5)
        pub.stop(timeout=5)
        assert box.stats()["pending"] == 2


WILL_CHILD = """
import sys, time
from edgeops.agent.mqtt import TelemetryPublisher, parse_broker_url
from edgeops.agent.outbox import Outbox
box_dir, url, device, prefix = sys.argv[1:5]
box = Outbox(box_dir)
status = lambda s: {"schema_version": 1, "kind": "status", "device_id": device, "state": s, "ts": time.time()}
pub = TelemetryPublisher(parse_broker_url(url), device, box, topic_prefix=prefix, status=status,
                         heartbeat=lambda: {"kind": "heartbeat"}, heartbeat_interval=60)
pub.start()
while not pub.connected:
    time.sleep(0.05)
print("connected", flush=True)
time.sleep(300)
"""


def test_last_will_marks_a_killed_agent_offline(tmp_path):
    prefix, device = f"test-{uuid.uuid4().hex[:10]}", "dev-killed"
    status_topic = topic(prefix, device, "status")
    sub = Subscriber(SHARED[1], status_topic)
    proc = subprocess.Popen([sys.executable, "-c", WILL_CHILD, str(tmp_path / "buf"), "mqtt://127.0.0.1:1883",
                             device, prefix], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "connected", proc.stderr.read()
        wait_until(lambda: [p["state"] for p in sub.payloads("/status")] == ["online"], what="online")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: len(sub.payloads("/status")) >= 2, what="the last will")
        will = sub.payloads("/status")[-1]
        assert will["state"] == "offline" and will["device_id"] == device
        late = Subscriber(SHARED[1], status_topic)    # the broker kept it as the retained status
        try:
            wait_until(lambda: late.messages, what="retained offline")
            assert late.messages[0].retain and json.loads(late.messages[0].payload)["state"] == "offline"
        finally:
            late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        sub.close()
        clear_retained(SHARED[1], status_topic)


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("edgeops test CA")).issuer_name(name("edgeops test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_mqtts_with_ca_file_and_password(tmp_path):
    prefix, device = f"test-{uuid.uuid4().hex[:10]}", "dev-tls"
    (tmp_path / "broker").mkdir()
    ca, cert, key = make_tls_files(tmp_path / "broker")
    pwfile = tmp_path / "broker" / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "agent", "s3cret"], check=True,
                   capture_output=True, timeout=30)
    broker = Broker(tmp_path / "broker", extra=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                                               f"allow_anonymous false\npassword_file {pwfile}\n")
    broker.start()
    sub = pub = None
    box = Outbox(tmp_path / "buf")
    try:
        sub = Subscriber(broker.port, f"{prefix}/#", ca_file=str(ca), username="agent", password="s3cret")
        cfg = parse_broker_url(f"mqtts://agent:s3cret@127.0.0.1:{broker.port}", ca_file=str(ca))
        pub = TelemetryPublisher(cfg, device, box, topic_prefix=prefix, status=status_payload(device),
                                 heartbeat=heartbeat_payload(device, box), log=lambda line: None)
        pub.start()
        append_windows(box, prefix, device, 3)
        pub.notify()
        assert pub.flush(WAIT)
        wait_until(lambda: len(sub.window_seqs()) >= 3, what="windows over TLS")
        assert sub.window_seqs() == [1, 2, 3]
        # a CA file that is not a certificate is a clear input error
        with pytest.raises(InputFileError, match="CA file"):
            TelemetryPublisher(parse_broker_url(f"mqtts://127.0.0.1:{broker.port}", ca_file=str(pwfile)),
                               device, box, status=status_payload(device), heartbeat=dict)
    finally:
        if pub is not None:
            pub.stop()
        if sub is not None:
            sub.close()
        box.close()
        broker.stop()
