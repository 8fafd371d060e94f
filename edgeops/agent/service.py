"""The agent service: load the bundles, serve HTTP, close telemetry windows, stop cleanly.

Threads: the HTTP server's accept loop and one thread per connection (server.py); one telemetry
thread closing a window per variant every --telemetry-interval seconds into the outbox; the
publisher's threads (mqtt.py) draining the outbox to the broker; the shadow runner (app.py).

Stopping (SIGTERM/SIGINT, or stop()): stop accepting requests, close the current (partial)
window into the outbox, give the publisher up to --flush-timeout seconds to send what is
pending, publish the "offline" status, and return. Windows not sent stay in the outbox for the
next start.
"""
from __future__ import annotations

import signal
import sqlite3
import sys
import threading
import time
from typing import Callable

from .. import __version__
from ..errors import EdgeOpsError, UsageError
from .app import AgentApp, Variant
from .config import AgentConfig
from .metrics import Metrics
from .model import LoadedBundle, check_compatible, load_bundle
from .server import make_server
from .telemetry import FeedbackCache, WindowStats, build_window_payload, encode_payload
from .validation import Validator


def stderr_log(line: str) -> None:
    """One line per event on stderr (journald adds its own time stamps; these help elsewhere)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        sys.stderr.write(f"{stamp} edgeops-agent {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: nothing better to do than go on
        pass


class Agent:
    def __init__(self, config: AgentConfig, log: Callable[[str], None] | None = None):
        self.config = config
        self.log = log or stderr_log
        self.app: AgentApp | None = None
        self.variants: list[Variant] = []
        self.outbox = None
        self.publisher = None
        self._server = None
        self.address: tuple = ("", 0)
        self._server_thread: threading.Thread | None = None
        self._window_thread: threading.Thread | None = None
        self._window_start = 0.0
        self._window_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = False
        self._sampler = None
        self.started_monotonic = time.monotonic()

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Load, listen, start telemetry; raises EdgeOpsError (nothing left running) on failure."""
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise

    def _start(self) -> None:
        c = self.config
        self.log(f"starting edgeops agent {__version__}; settings: {c.describe() or 'defaults'}")
        telemetry = c.broker is not None
        broker = None
        if telemetry:  # check the broker settings before the slow part
            from .mqtt import check_topic_prefix, parse_broker_url

            broker = parse_broker_url(c.broker, c.broker_username, c.broker_password, c.broker_ca_file)
            check_topic_prefix(c.topic_prefix)
            from .outbox import Outbox
            from .system import SystemSampler

            # First: it locks the buffer directory against a second agent before anything is written.
            self.outbox = Outbox(c.buffer_dir, max_windows=c.buffer_max_windows)
            self._sampler = SystemSampler()
        primary = self._load(c.bundle, "primary")
        candidate = self._load(c.candidate, "candidate") if c.candidate else None
        shadow = self._load(c.shadow, "shadow") if c.shadow else None
        for other, role in ((candidate, "candidate"), (shadow, "shadow")):
            if other is not None:
                check_compatible(primary, other, role)
        self.variants = [self._variant(b, role, telemetry) for b, role in
                         ((primary, "primary"), (candidate, "candidate"), (shadow, "shadow")) if b is not None]
        if self._sampler is not None:
            self._sampler.sample()  # starts the CPU clock of the first window
        metrics = Metrics()
        by_role = {v.role: v for v in self.variants}
        self.app = AgentApp(by_role["primary"], candidate=by_role.get("candidate"), split=c.split,
                            shadow=by_role.get("shadow"), shadow_queue=c.shadow_queue, metrics=metrics,
                            cache=FeedbackCache(c.feedback_max_requests),
                            cache_size=c.feedback_max_requests, device_id=c.device_id, log=self.log,
                            telemetry_status=self._telemetry_status,
                            outbox_stats=lambda: self.outbox.stats() if self.outbox else None,
                            mqtt_connected=lambda: self.publisher.connected if self.publisher else None)
        try:
            self._server = make_server(self.app, c.host, c.port, token=c.token, max_body=c.max_body_bytes,
                                       timeout=c.request_timeout, max_connections=c.max_connections, log=self.log)
        except OSError as exc:
            raise UsageError(f"cannot listen on {c.host}:{c.port}: {exc.strerror or exc}",
                             "pick another --port or --host (is another agent running?)") from None
        self.address = self._server.server_address[:2]
        self._window_start = time.time()
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                               name="edgeops-http", daemon=True)
        self._server_thread.start()
        if telemetry:
            from .mqtt import TelemetryPublisher

            self.publisher = TelemetryPublisher(broker, c.device_id, self.outbox, topic_prefix=c.topic_prefix,
                                                status=self._status_payload, heartbeat=self._heartbeat_payload,
                                                heartbeat_interval=c.heartbeat_interval, log=self.log)
            self.publisher.start()
            self._window_thread = threading.Thread(target=self._window_loop, name="edgeops-windows", daemon=True)
            self._window_thread.start()
            self.log(f"telemetry: a window every {c.telemetry_interval:g} s to {broker.url} as device "
                     f"'{c.device_id}', buffered in {c.buffer_dir}")
        else:
            self.log("telemetry is off: no --broker given (predictions are served, nothing is reported)")
        self.log(f"listening on {self.url} (token {'required' if c.token else 'not set'})")
        if not c.token and c.host not in ("127.0.0.1", "localhost", "::1"):
            self.log(f"warning: listening on {c.host} without a token: anyone who can reach this port can "
                     "use the model (set --token or EDGEOPS_AGENT_TOKEN)")

    def _load(self, path: str, role: str) -> LoadedBundle:
        c = self.config
        started = time.monotonic()
        bundle = load_bundle(path, c.buffer_dir, trusted_key=c.trusted_key, require_signature=c.require_signature,
                             threads=c.threads, log=self.log)
        inputs = ", ".join(t.describe() for t in bundle.inputs)
        self.log(f"loaded the {role} bundle {bundle.name} {bundle.version} (id {bundle.id[:12]}, "
                 f"{bundle.runtime.format}, signature: {bundle.signature}) in {time.monotonic() - started:.2f} s; "
                 f"inputs {inputs}")
        return bundle

    def _variant(self, bundle: LoadedBundle, role: str, telemetry: bool) -> Variant:
        c = self.config
        validator = Validator(bundle.inputs, bundle.refstats, c.range_check, c.max_batch_rows, c.range_tolerance)
        stats = WindowStats(bundle.refstats, c.sample_rate) if telemetry else None
        return Variant(role, role, bundle, validator, stats)

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    # -- telemetry -----------------------------------------------------------------------------

    def _agent_info(self) -> dict:
        return {"version": __version__, "instance": self.outbox.instance}

    def _bundles(self) -> list[dict]:
        return [v.info() for v in self.variants]

    def _status_payload(self, state: str) -> dict:
        return {"schema_version": 1, "kind": "status", "device_id": self.config.device_id, "state": state,
                "ts": time.time(), "agent": self._agent_info(), "bundles": self._bundles()}

    def _heartbeat_payload(self) -> dict:
        stats = self.outbox.stats()
        return {"schema_version": 1, "kind": "heartbeat", "device_id": self.config.device_id, "ts": time.time(),
                "uptime_s": round(time.monotonic() - self.started_monotonic, 3), "agent": self._agent_info(),
                "bundles": self._bundles(), "last_seq": stats["last_seq"],
                "outbox": {"pending": stats["pending"], "dropped_total": stats["dropped_total"]}}

    def _telemetry_status(self) -> dict:
        c = self.config
        if self.publisher is None:
            return {"enabled": False, "reason": "no --broker given"}
        return {"enabled": True, "broker": self.publisher.broker.url, "connected": self.publisher.connected,
                "device_id": c.device_id, "interval_s": c.telemetry_interval, "outbox": self.outbox.stats()}

    def _window_loop(self) -> None:
        interval = self.config.telemetry_interval
        due = time.monotonic() + interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            try:
                self.close_window()
            except Exception as exc:  # the loop must outlive one bad window (e.g. a full disk)
                self.log(f"error: closing the telemetry window failed: {type(exc).__name__}: {exc}")
            due += interval
            if due < time.monotonic():  # the machine slept or stalled: start afresh, don't burst
                due = time.monotonic() + interval

    def close_window(self) -> int:
        """Close the current window of every variant into the outbox; returns how many were written."""
        with self._window_lock:
            if self.outbox is None:
                return 0
            start, end = self._window_start, time.time()
            self._window_start = end
            system = self._sampler.sample()
            written = 0
            for v in self.variants:
                body = v.stats.snapshot_and_reset()
                try:
                    self.outbox.append(self._topic, self._builder(v, start, end, body, system))
                    written += 1
                    self.app.metrics.count_window()
                except (EdgeOpsError, sqlite3.Error, OSError) as exc:  # e.g. a full disk: the window is lost
                    # Counted on /metrics: the outbox's own drop count cannot hold it (it is on that disk).
                    self.app.metrics.count_lost_window()
                    self.log(f"error: cannot store the {v.name} telemetry window (lost; counted in "
                             f"edgeops_agent_telemetry_windows_lost_total): {exc}")
            if self.publisher is not None:
                self.publisher.notify()
            return written

    @property
    def _topic(self) -> str:
        from .mqtt import topic

        return topic(self.config.topic_prefix, self.config.device_id, "telemetry")

    def _builder(self, v: Variant, start: float, end: float, body: dict, system: dict):
        def build(seq: int, state: dict) -> bytes:
            return encode_payload(build_window_payload(
                device_id=self.config.device_id, seq=seq, agent=self._agent_info(), bundle=v.bundle.info(),
                variant={"name": v.name, "role": v.role}, start=start, end=end, body=body, system=system,
                outbox=state))
        return build

    # -- stop ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop cleanly. Returns the exit code (0)."""
        received: list[str] = []

        def on_signal(signum, frame) -> None:
            received.append(signal.Signals(signum).name)
            self._stop.set()

        # Signal handlers can only be set from the main thread (an embedding program handles its own).
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            self.start()
            while not self._stop.wait(1.0):
                pass
            self.log(f"stopping ({received[0] if received else 'requested'})")
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0

    def stop(self) -> None:
        """Stop serving, write the partial window, flush, publish offline. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self.app is not None:
            self.app.stopping = True
        serving = self._server is not None
        self._teardown()
        if serving:
            self.log("stopped")

    def _teardown(self) -> None:
        self._stop.set()
        if self._server is not None:
            if self._server_thread is not None and self._server_thread.is_alive():
                self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.app is not None and self.app.shadow_runner is not None:
            self.app.shadow_runner.stop(timeout=2.0)
        if self._window_thread is not None:
            self._window_thread.join(timeout=5.0)
        if self.publisher is not None:
            self.close_window()
            flushed = self.publisher.flush(self.config.flush_timeout)
            if not flushed:
                pending = self.outbox.stats()["pending"]
                self.log(f"{pending} telemetry window(s) not yet acknowledged: kept in the outbox for the next start")
            self.publisher.stop(timeout=5.0)
            self.publisher = None
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
