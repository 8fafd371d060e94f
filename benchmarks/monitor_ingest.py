"""Monitor ingestion throughput against the broker's ceiling, in one run, through a real Mosquitto.

    python benchmarks/monitor_ingest.py [--devices 1000] [--messages 60000] [--features 64] [--json OUT]

A private Mosquitto starts on a free port. Realistic window payloads are built with the agent's
own telemetry code (WindowStats on rows drawn around the reference data, ~64 numeric features on
the reference's quantile bins, a label output, latency histogram), one per simulated device.
A separate publisher process publishes them (QoS 1) as a fleet of ``--devices`` devices.

Two consumers drain the same kind of backlog, each through a persistent session (so the
publisher's speed does not cap the measurement, and publisher and consumer do not fight over
the two cores):
(a) a bare paho subscriber that only counts messages: the broker + client ceiling;
(b) the monitor (edgeops.fleet.monitor.Monitor, the code behind `edgeops monitor`): parse,
    validate, store in SQLite (batched, manual acks after commit), aggregate, and evaluate drift
    over all devices every ``--evaluate-interval`` seconds while it drains.
Printed: msgs/s of each and the ratio (b)/(a), as JSON too with --json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_reference(features: int, seed: int = 0) -> dict:
    from edgeops.bundle.refstats import reference_stats

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, features)).astype(np.float32) * rng.uniform(0.5, 3, features) + rng.uniform(-5, 5, features)
    labels = rng.integers(0, 4, 4000)
    return reference_stats({"x": x}, {"label": labels})


def make_payloads(refstats: dict, devices: int, features: int, rows: int, seed: int = 1) -> list[bytes]:
    """One encoded window per device, with ``"seq":0`` left to be replaced by the publisher."""
    from edgeops.agent.telemetry import WindowStats, build_window_payload, encode_payload

    rng = np.random.default_rng(seed)
    means = np.array([f["mean"] for f in refstats["features"]])
    stds = np.array([f["std"] for f in refstats["features"]])
    bundle = {"id": hashlib.sha256(json.dumps(refstats, sort_keys=True).encode()).hexdigest(),
              "name": "bench", "version": "1"}
    out = []
    for d in range(devices):
        stats = WindowStats(refstats)
        for _ in range(4):  # a few requests per window
            x = (rng.normal(size=(rows // 4, features)) * stds + means).astype(np.float32)
            stats.record_request({"x": x}, {"label": rng.integers(0, 4, rows // 4)}, float(rng.uniform(0.3, 3)))
        body = stats.snapshot_and_reset()
        now = time.time()
        payload = build_window_payload(
            device_id=f"dev-{d:05d}", seq=0, agent={"version": "bench", "instance": uuid.uuid4().hex[:16]},
            bundle=bundle, variant={"name": "primary", "role": "primary"}, start=now - 60, end=now, body=body,
            system={"cpu_percent": 1.0, "rss_bytes": 50_000_000, "temperature_c": None, "load1": 0.2},
            outbox={"pending": 1, "dropped_total": 0})
        out.append(encode_payload(payload))
    return out


def publish(port: int, prefix: str, payload_file: str, messages: int) -> None:
    """The publisher process: ``messages`` windows round-robin over the devices, seq increasing."""
    import paho.mqtt.client as mqtt

    payloads = json.loads(Path(payload_file).read_text())
    templates = [p.encode() for p in payloads]
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    info = None
    n = len(templates)
    for i in range(messages):
        d = i % n
        body = templates[d].replace(b'"seq":0,', b'"seq":%d,' % (i // n + 1), 1)
        info = client.publish(f"{prefix}/v1/devices/dev-{d:05d}/telemetry", body, qos=1)
    if info is not None:
        info.wait_for_publish(120)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"published": messages, "seconds": elapsed, "msgs_per_s": messages / elapsed}))


def run_publisher(port: int, prefix: str, payload_file: str, messages: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--publish", str(port), prefix, payload_file, str(messages)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"publisher failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bare_subscriber(port: int, prefix: str, messages: int, publish_backlog, broker_pid: int) -> dict:
    """Session first (so the backlog queues for it), then drain and count."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client_id = f"bare-{uuid.uuid4().hex[:8]}"
    got = {"n": 0, "first": None, "last": None}
    done = threading.Event()

    def on_message(client, userdata, message):
        got["n"] += 1
        if got["n"] >= messages:
            got["last"] = time.perf_counter()
            done.set()

    def connect():
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        c.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = 2000
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        return c

    c = connect()
    c.subscribe(f"{prefix}/v1/devices/+/telemetry", qos=1)
    c.loop(1.0)
    c.disconnect()
    pub = publish_backlog()
    c = connect()
    cpu_self, cpu_broker = time.process_time(), _cpu_seconds(broker_pid)
    start = time.perf_counter()
    c.loop_start()
    done.wait(600)
    cpu = {"subscriber_process": time.process_time() - cpu_self, "broker": _cpu_seconds(broker_pid) - cpu_broker}
    # End the session: left behind, it would queue a copy of the monitor's backlog in the broker,
    # which then works twice as hard (and holds ~0.5 GB more) while the monitor drains.
    end = Properties(PacketTypes.DISCONNECT)
    end.SessionExpiryInterval = 0
    c.disconnect(properties=end)
    c.loop_stop()
    seconds = got["last"] - start
    return {"received": got["n"], "seconds": seconds, "msgs_per_s": got["n"] / seconds, "cpu_seconds": cpu,
            "cpu_us_per_msg": {k: v / max(got["n"], 1) * 1e6 for k, v in cpu.items()}, "publisher": pub}


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pool_pids(pool) -> list[int]:
    return list(getattr(pool, "_processes", None) or {}) if pool is not None else []


def monitor_drain(port: int, prefix: str, messages: int, refstats: dict, bundle_id: str, db_url: str,
                  evaluate_interval: float, publish_backlog, parse_workers: int, broker_pid: int,
                  batch_size: int = 500) -> dict:
    from edgeops.fleet.broker import parse_broker_url
    from edgeops.fleet.detectors import DetectorConfig
    from edgeops.fleet.evaluation import EvaluatorConfig
    from edgeops.fleet.monitor import Monitor, MonitorConfig
    from edgeops.fleet.references import Reference

    ref = Reference(bundle_id, "bench", "1", {"model": {"name": "bench", "version": "1"}}, refstats)
    config = MonitorConfig(broker=parse_broker_url(f"mqtt://127.0.0.1:{port}"), db_url=db_url, topic_prefix=prefix,
                           client_id=f"mon-{uuid.uuid4().hex[:8]}", parse_workers=parse_workers, batch_size=batch_size,
                           evaluator=EvaluatorConfig(evaluate_interval=evaluate_interval, horizon_s=3600,
                                                     stale_after=3600, detector=DetectorConfig()))
    quiet = lambda message: None  # noqa: E731
    monitor = Monitor(config, {bundle_id: ref}, log=quiet)
    monitor.start()  # creates the persistent session and subscription
    if not monitor.wait_connected(30):
        raise SystemExit("monitor did not connect")
    time.sleep(1.0)
    monitor.stop()
    pub = publish_backlog()
    monitor = Monitor(config, {bundle_id: ref}, log=quiet)
    cpu_self, cpu_broker = time.process_time(), _cpu_seconds(broker_pid)
    # start() starts the parser processes before it connects: the clock starts when messages can flow.
    monitor.start()
    start = time.perf_counter()
    children_before = sum(_cpu_seconds(pid) for pid in _pool_pids(monitor.parser._pool))
    deadline = time.monotonic() + 600
    while monitor.stats["windows_new"] < messages and time.monotonic() < deadline:
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    evaluations_in_drain = monitor.evaluator.evaluations
    stored = monitor.stats["windows_new"]
    cpu_children = sum(_cpu_seconds(pid) for pid in _pool_pids(monitor.parser._pool)) - children_before
    cpu = {"monitor_process": time.process_time() - cpu_self, "parser_processes": cpu_children,
           "broker": _cpu_seconds(broker_pid) - cpu_broker}
    # Let one more drift evaluation of the whole fleet finish (it runs in its own process).
    before = monitor.evaluator.evaluations
    t0 = time.perf_counter()
    while evaluate_interval <= 60 and monitor.evaluator.evaluations == before and time.perf_counter() - t0 < 360:
        time.sleep(0.05)
    evaluation_wait = time.perf_counter() - t0 if monitor.evaluator.evaluations > before else None
    evaluations = monitor.evaluator.evaluations
    monitor.stop()
    return {"stored": stored, "seconds": seconds, "msgs_per_s": stored / seconds, "cpu_seconds": cpu,
            "cpu_us_per_msg": {k: v / max(stored, 1) * 1e6 for k, v in cpu.items()},
            "evaluations_during_drain": evaluations_in_drain, "evaluations_after_drain": evaluations,
            "evaluation_wait_s": evaluation_wait, "publisher": pub}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--publish":
        publish(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=60000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--rows", type=int, default=256, help="rows per window")
    parser.add_argument("--evaluate-interval", type=float, default=2.0,
                        help="seconds between whole-fleet drift evaluations while the monitor drains")
    parser.add_argument("--parse-workers", type=int, default=None,
                        help="the monitor's parser processes (default: as `edgeops monitor`, one per core up to 4)")
    parser.add_argument("--batch-size", type=int, default=500, help="as `edgeops monitor --batch-size`")
    parser.add_argument("--skip-bare", action="store_true",
                        help="measure the monitor only (for profiling; no ratio is printed)")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args(argv)
    from edgeops.fleet.pool import default_workers

    if args.parse_workers is None:
        args.parse_workers = default_workers()
    # On SIGTERM, unwind through the finally blocks so that the private broker is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from edgeops.fleet.broker import PrivateBroker

    with tempfile.TemporaryDirectory(prefix="edgeops-bench-") as tmp:
        tmp = Path(tmp)
        refstats = make_reference(args.features)
        payloads = make_payloads(refstats, args.devices, args.features, args.rows)
        bundle_id = json.loads(payloads[0])["bundle"]["id"]
        payload_file = tmp / "payloads.json"
        payload_file.write_text(json.dumps([p.decode() for p in payloads]))
        broker = PrivateBroker(tmp / "broker", extra_config="max_queued_messages 0\nmemory_limit 0\n").start()
        try:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            backlog = lambda: run_publisher(broker.port, prefix, str(payload_file), args.messages)  # noqa: E731
            if args.skip_bare:
                mon = monitor_drain(broker.port, prefix, args.messages, refstats, bundle_id,
                                    f"sqlite:///{tmp / 'fleet.db'}", args.evaluate_interval, backlog,
                                    args.parse_workers, broker.process.pid, args.batch_size)
                print(f"monitor: {mon['msgs_per_s']:.0f} msg/s; CPU per message (us): "
                      + ", ".join(f"{k} {v:.0f}" for k, v in mon["cpu_us_per_msg"].items()))
                return 0
            bare = bare_subscriber(broker.port, prefix, args.messages, backlog, broker.process.pid)
            mon = monitor_drain(broker.port, prefix, args.messages, refstats, bundle_id,
                                f"sqlite:///{tmp / 'fleet.db'}", args.evaluate_interval, backlog,
                                args.parse_workers, broker.process.pid, args.batch_size)
        finally:
            broker.stop()
    result = {
        "benchmark": "monitor_ingest", "devices": args.devices, "messages": args.messages,
        "features": args.features, "payload_bytes_mean": float(np.mean([len(p) for p in payloads])),
        "bare_subscriber": bare, "monitor": mon, "ratio": mon["msgs_per_s"] / bare["msgs_per_s"],
        "cpu_count": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0],
    }
    print(f"payload: {result['payload_bytes_mean']:.0f} bytes, {args.devices} devices, {args.messages} messages")
    print(f"publisher (separate process): {bare['publisher']['msgs_per_s']:.0f} msg/s")
    print(f"(a) bare paho subscriber:      {bare['msgs_per_s']:.0f} msg/s")
    print(f"(b) monitor (stored + drift):  {mon['msgs_per_s']:.0f} msg/s "
          f"(parse workers: {args.parse_workers}; {mon['evaluations_during_drain']} whole-fleet drift evaluations "
          f"during the drain"
          + (f"; one more finished {mon['evaluation_wait_s']:.1f} s after it)"
             if mon["evaluation_wait_s"] is not None else ")"))
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in mon["cpu_us_per_msg"].items())
    print(f"    CPU per message (us): {cpu}; bare subscriber: "
          + ", ".join(f"{k} {v:.0f}" for k, v in bare["cpu_us_per_msg"].items()))
    print(f"ratio (b)/(a): {result['ratio']:.0%}; load average {result['load_average_1m_at_end']:.1f} "
          f"on {os.cpu_count()} cores")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
