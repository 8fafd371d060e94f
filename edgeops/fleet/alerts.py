"""Alerts of the monitor: the payload, and where it goes (MQTT, log, webhooks, a command).

Delivery never blocks ingestion: webhooks and the retraining command run on their own threads,
behind bounded queues; a slow or dead endpoint only delays other alerts of the same kind.
The payload is documented in docs/fleet-monitor.md.
"""
from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

from ..errors import UsageError

SCHEMA_VERSION = 1
FLEET = "__fleet__"  # the device id of fleet-wide alerts (a valid id, so also a valid topic level)
# Alert types that mean "the model no longer fits its data": they may trigger retraining.
RETRAIN_TYPES = ("drift", "prediction_drift", "accuracy")
QUEUE_LIMIT = 1000


def alert_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/v1/alerts/{device_id}"


def build_alert(*, alert_type: str, state: str, device_id: str, bundle: dict | None, scope: str | None,
                message: str, features: list[dict] | None = None, details: dict | None = None,
                evaluated_at: float | None = None, horizon_s: float | None = None) -> dict:
    """One alert: ``state`` is "raised" or "cleared"; ``features`` the drifting ones, worst first."""
    now = time.time()
    return {"schema_version": SCHEMA_VERSION, "kind": "alert", "alert_id": uuid.uuid4().hex,
            "type": alert_type, "state": state, "device_id": device_id, "scope": scope,
            "bundle": bundle, "ts": now, "evaluated_at": evaluated_at if evaluated_at is not None else now,
            "horizon_s": horizon_s, "message": message, "features": features or [], "details": details or {}}


def encode_alert(alert: dict) -> bytes:
    return json.dumps(alert, separators=(",", ":"), allow_nan=False, default=str).encode()


def parse_command(command: str | None) -> list[str] | None:
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--on-drift-command cannot be parsed: {exc}",
                         "quote it like a shell command, e.g. --on-drift-command 'python retrain.py'") from None
    if not argv:
        raise UsageError("--on-drift-command is empty", "give the command to run, e.g. 'python retrain.py'")
    return argv


class AlertDispatcher:
    """Publishes, logs and forwards alerts. ``publish(topic, payload)`` sends with QoS 1."""

    def __init__(self, *, prefix: str, publish: Callable[[str, bytes], None] | None = None,
                 webhook: str | None = None, retrain_webhook: str | None = None, command: str | None = None,
                 command_timeout: float = 300.0, http_timeout: float = 10.0,
                 log: Callable[[str], None] = print):
        self.prefix = prefix
        self.publish = publish
        self.webhook = webhook
        self.retrain_webhook = retrain_webhook
        self.command = parse_command(command)
        self.command_timeout = command_timeout
        self.http_timeout = http_timeout
        self.log = log
        self.stats = {"alerts": 0, "webhook_ok": 0, "webhook_failed": 0, "commands_ok": 0,
                      "commands_failed": 0, "dropped": 0}
        self._http: queue.Queue = queue.Queue(QUEUE_LIMIT)
        self._commands: queue.Queue = queue.Queue(QUEUE_LIMIT)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._http_loop, "alert-http"), (self._command_loop, "alert-command")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def dispatch(self, alert: dict) -> None:
        self.stats["alerts"] += 1
        body = encode_alert(alert)
        names = ", ".join(f["feature"] for f in alert.get("features", [])[:5])
        self.log(f"alert {alert['state']}: {alert['type']} on {alert['device_id']}"
                 + (f" (bundle {alert['bundle'].get('name')} {alert['bundle'].get('version')})"
                    if alert.get("bundle") else "")
                 + (f" features: {names}" if names else "") + f" -- {alert['message']}")
        if self.publish is not None:
            self.publish(alert_topic(self.prefix, alert["device_id"]), body)
        retrain = alert["state"] == "raised" and alert["type"] in RETRAIN_TYPES
        if self.webhook:
            self._enqueue(self._http, (self.webhook, body))
        if retrain and self.retrain_webhook:
            self._enqueue(self._http, (self.retrain_webhook, body))
        if retrain and self.command:
            self._enqueue(self._commands, (alert, body))

    def _enqueue(self, q: queue.Queue, item) -> None:
        try:
            q.put_nowait(item)
        except queue.Full:
            self.stats["dropped"] += 1
            self.log("alert delivery queue full: an alert was not forwarded")

    def stop(self, timeout: float = 5.0) -> None:
        """Let queued deliveries finish for up to ``timeout`` seconds."""
        for q in (self._http, self._commands):
            try:
                q.put(None, timeout=timeout)
            except queue.Full:
                continue
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _http_loop(self) -> None:
        while True:
            item = self._http.get()
            if item is None:
                return
            url, body = item
            if self._post(url, body):
                self.stats["webhook_ok"] += 1
            else:
                self.stats["webhook_failed"] += 1

    def _post(self, url: str, body: bytes, attempts: int = 3) -> bool:
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "edgeops-monitor"})
        error = ""
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(request, timeout=self.http_timeout) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code < 500:  # the endpoint refuses this alert: retrying will not help
                    break
            except (urllib.error.URLError, OSError) as exc:
                error = str(getattr(exc, "reason", exc))
            time.sleep(min(2 ** attempt, 10))
        self.log(f"webhook {url} failed: {error}")
        return False

    def _command_loop(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            alert, body = item
            self._run_command(alert, body)

    def _run_command(self, alert: dict, body: bytes) -> None:
        bundle = alert.get("bundle") or {}
        env = dict(os.environ, EDGEOPS_ALERT_ID=alert["alert_id"], EDGEOPS_ALERT_TYPE=alert["type"],
                   EDGEOPS_ALERT_STATE=alert["state"], EDGEOPS_DEVICE_ID=alert["device_id"],
                   EDGEOPS_SCOPE=str(alert.get("scope") or ""), EDGEOPS_BUNDLE_ID=str(bundle.get("id") or ""),
                   EDGEOPS_BUNDLE_NAME=str(bundle.get("name") or ""),
                   EDGEOPS_BUNDLE_VERSION=str(bundle.get("version") or ""),
                   EDGEOPS_FEATURES=",".join(f["feature"] for f in alert.get("features", [])))
        try:
            proc = subprocess.run(self.command, input=body, env=env, capture_output=True,
                                  timeout=self.command_timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            self.stats["commands_failed"] += 1
            self.log(f"--on-drift-command timed out after {self.command_timeout:g} s and was killed")
            return
        except OSError as exc:
            self.stats["commands_failed"] += 1
            self.log(f"--on-drift-command could not start: {exc}")
            return
        if proc.returncode == 0:
            self.stats["commands_ok"] += 1
            self.log(f"--on-drift-command finished for alert {alert['alert_id']}")
        else:
            self.stats["commands_failed"] += 1
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            self.log(f"--on-drift-command exited with {proc.returncode}: {tail[0][:200]}")
