"""What the agent's endpoints do: predict (with A/B split and shadow), feedback, health, metrics.

The HTTP framing lives in server.py; this module turns a request body into a response. Per
variant, everything constant is prepared at load: the validator, the response prefix (model and
variant as JSON bytes) and the function that runs the model. Telemetry, the feedback cache and the
shadow's queue are fed after the response is sent (``after``), off the client's clock.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import EdgeOpsError
from .metrics import CONTENT_TYPE, NO_VARIANT, Metrics
from .model import LoadedBundle
from .server import Response, error_response
from .telemetry import FeedbackCache, WindowStats, prediction_values
from .validation import Rejection, Validator

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Generated request ids: a random per-process prefix and a counter. Unique without a system call
# per request (uuid4 reads the kernel's random source each time, a measurable part of a request).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)  # next() on it is atomic in CPython
SHADOW_KEY = "#shadow"  # feedback cache key suffix for the shadow's prediction of a request


@dataclass
class Variant:
    name: str
    role: str  # primary | candidate | shadow
    bundle: LoadedBundle
    validator: Validator
    stats: WindowStats | None  # None without a broker: no telemetry
    prefix: bytes = b""
    run: Callable[[dict], dict] | None = None

    def __post_init__(self):
        model = json.dumps({"bundle_id": self.bundle.id, "name": self.bundle.name,
                            "version": self.bundle.version}, separators=(",", ":"))
        self.prefix = ('{"model":' + model + ',"variant":' + json.dumps(self.name) + ',"request_id":"').encode()
        runtime_run = self.bundle.runtime.run
        if self.bundle.runtime.format != "onnx":
            runtime_run = _serialized(runtime_run)
        self.run = _row_by_row(runtime_run) if self.validator.row_by_row else runtime_run

    def info(self) -> dict:
        return {**self.bundle.info(), "variant": self.name, "role": self.role}


def _serialized(run: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """One call at a time: a LiteRT interpreter holds its tensors in the object and is not
    thread-safe (onnxruntime's InferenceSession.run is, so ONNX models run concurrently)."""
    lock = threading.Lock()

    def run_locked(feeds: dict) -> dict:
        with lock:
            return run(feeds)
    return run_locked


def _row_by_row(run: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """For a model with a fixed batch of 1: run each row, stack the outputs."""
    def run_rows(feeds: dict) -> dict:
        rows = len(next(iter(feeds.values())))
        if rows == 1:
            return run(feeds)
        parts = [run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(rows)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return run_rows


class ShadowRunner:
    """Runs the shadow variant on accepted requests in one background thread, from a bounded queue;
    when the queue is full the request is skipped for the shadow (and counted), never waited for."""

    def __init__(self, variant: Variant, size: int, metrics: Metrics, cache: FeedbackCache,
                 log: Callable[[str], None]):
        self.variant, self.metrics, self.cache, self.log = variant, metrics, cache, log
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.thread = threading.Thread(target=self._loop, name="edgeops-shadow", daemon=True)
        self.thread.start()

    def submit(self, request_id: str, feeds: dict) -> None:
        try:
            self.queue.put_nowait((request_id, feeds))
        except queue.Full:
            self.metrics.count_shadow_drop()

    def stop(self, timeout: float) -> None:
        try:
            self.queue.put((None, None), timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)

    def _loop(self) -> None:
        v = self.variant
        while True:
            request_id, feeds = self.queue.get()
            if request_id is None:
                return
            start = time.perf_counter()
            try:
                outputs = v.run(feeds)
            except Exception as exc:  # the shadow must never take the agent down: count, log, go on
                latency = time.perf_counter() - start
                self.metrics.request(v.name, 500, latency)
                if v.stats is not None:
                    v.stats.record_error(latency * 1000.0)
                self.log(f"warning: the shadow model failed: {getattr(exc, 'message', exc)}")
                continue
            latency = time.perf_counter() - start
            self.metrics.request(v.name, 200, latency)
            try:
                if v.stats is not None:
                    v.stats.record_request(feeds, outputs, latency * 1000.0)
                self.cache.put(request_id + SHADOW_KEY, v.name, prediction_values(v.bundle.refstats, outputs))
            except Exception as exc:
                self.log(f"error: recording a shadow run failed: {type(exc).__name__}: {exc}")


class AgentApp:
    """The endpoints. ``telemetry_status`` and ``metrics_sources`` come from the service."""

    def __init__(self, primary: Variant, *, candidate: Variant | None = None, split: float = 0.0,
                 shadow: Variant | None = None, shadow_queue: int = 64, metrics: Metrics,
                 cache: FeedbackCache, cache_size: int, device_id: str, log: Callable[[str], None],
                 telemetry_status: Callable[[], dict], outbox_stats: Callable[[], dict | None],
                 mqtt_connected: Callable[[], bool | None]):
        self.primary, self.candidate, self.shadow = primary, candidate, shadow
        self.variants = {v.name: v for v in (primary, candidate, shadow) if v is not None}
        self._threshold = int(round(split * 10000)) if candidate is not None else 0
        self.metrics, self.cache, self.cache_size = metrics, cache, cache_size
        self.device_id, self.log = device_id, log
        self.telemetry_status, self.outbox_stats, self.mqtt_connected = telemetry_status, outbox_stats, mqtt_connected
        self.shadow_runner = ShadowRunner(shadow, shadow_queue, metrics, cache, log) if shadow else None
        self.started = time.time()
        self.stopping = False

    def route(self, request_id: str) -> Variant:
        """The same request id always goes to the same variant: a hash of the id picks one of 10,000
        buckets (a cryptographic hash, so sequential or structured ids still spread evenly)."""
        if self._threshold:
            bucket = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big") % 10000
            if bucket < self._threshold:
                return self.candidate
        return self.primary

    # -- POST /v1/predict ----------------------------------------------------------------------

    def predict(self, body: bytes, header_id: bytes | None):
        start = time.perf_counter()
        variant = self.primary
        try:
            payload = _parse_object(body, "inputs")
            request_id = _request_id(payload.get("request_id"), header_id)
            variant = self.route(request_id)
            feeds, rows, warnings = variant.validator.bind(payload["inputs"], b"true" in body or b"false" in body)
        except Rejection as rejection:
            return self._rejected(variant, rejection), None
        try:
            outputs = variant.run(feeds)
        except EdgeOpsError as exc:
            latency = time.perf_counter() - start
            self.metrics.request(variant.name, 500, latency)
            if variant.stats is not None:
                variant.stats.record_error(latency * 1000.0)
            self.log(f"error: the {variant.name} model failed on a request: {exc.message}")
            return error_response(500, f"the model failed: {exc.message}", exc.hint or "see the agent's log",
                                  request_id=request_id), None
        latency = time.perf_counter() - start
        out = variant.prefix + request_id.encode() + b'","outputs":' + _encode_outputs(outputs)
        if warnings:
            out += b',"warnings":' + json.dumps(warnings).encode()
            self.metrics.range_warning(variant.name)
        self.metrics.request(variant.name, 200, latency)

        def after() -> None:
            if variant.stats is not None:
                variant.stats.record_request(feeds, outputs, latency * 1000.0)
            self.cache.put(request_id, variant.name, prediction_values(variant.bundle.refstats, outputs))
            if self.shadow_runner is not None:
                self.shadow_runner.submit(request_id, feeds)

        return Response(200, out + b"}"), after

    def _rejected(self, variant: Variant, rejection: Rejection) -> Response:
        self.metrics.request(variant.name, rejection.status)
        self.metrics.rejection(variant.name, rejection.reason)
        if variant.stats is not None:
            variant.stats.record_rejection(rejection.reason, rejection.features)
        return error_response(rejection.status, rejection.message, rejection.hint, reason=rejection.reason)

    # -- POST /v1/feedback ---------------------------------------------------------------------

    def feedback(self, body: bytes) -> Response:
        try:
            payload = _parse_object(body, "feedback")
        except Rejection as rejection:
            return error_response(rejection.status, rejection.message, rejection.hint)
        items = payload["feedback"]
        if not isinstance(items, list):
            return error_response(400, '"feedback" must be a list', 'send {"feedback": [{"request_id": "...", '
                                                                    '"labels": [...]}]}')
        accepted, unknown, invalid = 0, [], []
        for item in items:
            rid = item.get("request_id") if isinstance(item, dict) else None
            labels = item.get("labels") if isinstance(item, dict) else None
            if not isinstance(rid, str) or not isinstance(labels, list):
                invalid.append({"request_id": rid if isinstance(rid, str) else None,
                                "error": 'each entry needs "request_id" (text) and "labels" (a list)'})
                continue
            found = self.cache.pop(rid)
            if found is None:
                unknown.append(rid)
                continue
            variant_name, predicted = found
            if not predicted:
                invalid.append({"request_id": rid, "error": "the bundle has no reference statistics of its "
                                                            "outputs, so predictions cannot be scored"})
                continue
            if len(labels) != len(predicted):
                self.cache.put(rid, variant_name, predicted)  # keep it for a corrected retry
                invalid.append({"request_id": rid, "error": f"{len(labels)} labels for {len(predicted)} rows"})
                continue
            try:
                self._record_feedback(variant_name, predicted, labels)
                shadow = self.cache.pop(rid + SHADOW_KEY)
                if shadow is not None and len(shadow[1]) == len(labels):
                    self._record_feedback(shadow[0], shadow[1], labels)
            except EdgeOpsError as exc:
                invalid.append({"request_id": rid, "error": exc.message})
                continue
            accepted += 1
        if unknown:
            self.metrics.feedback(NO_VARIANT, "unknown", len(unknown))
        result = {"accepted": accepted, "unknown": unknown, "invalid": invalid}
        if unknown:
            result["hint"] = (f"unknown ids were never answered here, already got feedback, or are older than "
                              f"the last {self.cache_size} predictions")
        return Response(200, json.dumps(result).encode())

    def _record_feedback(self, variant_name: str, predicted: list, labels: list) -> None:
        variant = self.variants.get(variant_name)
        if variant is None:
            return
        if variant.stats is not None:
            variant.stats.record_feedback(predicted, labels)
        self.metrics.feedback(variant_name, "matched")

    # -- GET /healthz, GET /metrics, refused requests ------------------------------------------

    def health(self) -> Response:
        body = {"status": "stopping" if self.stopping else "ok", "device_id": self.device_id,
                "uptime_s": round(time.time() - self.started, 3),
                "bundles": [{**v.info(), "signature": v.bundle.signature} for v in self.variants.values()],
                "split": self._threshold / 10000 if self.candidate else None,
                "telemetry": self.telemetry_status()}
        return Response(503 if self.stopping else 200, json.dumps(body).encode())

    def metrics_text(self) -> Response:
        text = self.metrics.render(models=[v.info() for v in self.variants.values()],
                                   outbox=self.outbox_stats(), mqtt_connected=self.mqtt_connected())
        return Response(200, text, CONTENT_TYPE.encode())

    def refused(self, status: int) -> None:
        self.metrics.request(NO_VARIANT, status)


def _parse_object(body: bytes, key: str) -> dict:
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Rejection(400, "schema", "the body is not UTF-8 text", "send UTF-8 JSON") from None
    except RecursionError:
        raise Rejection(400, "schema", "the JSON is nested too deeply", "send rows as plain lists of values") from None
    except ValueError as exc:
        raise Rejection(400, "schema", f"the body is not valid JSON: {exc}", "send a JSON object") from None
    if not isinstance(payload, dict) or key not in payload:
        raise Rejection(400, "schema", f'the body must be a JSON object with "{key}"',
                        'send {"inputs": [[...], ...]} (or {"inputs": {"NAME": [...]}} for several inputs)'
                        if key == "inputs" else 'send {"feedback": [{"request_id": "...", "labels": [...]}]}')
    return payload


def _request_id(given, header: bytes | None) -> str:
    if given is None and header:
        given = header.decode("latin-1")
    if given is None:
        return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
    if not isinstance(given, str) or not REQUEST_ID.match(given):
        raise Rejection(400, "schema", "the request id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                        "send another request_id, or none to get one")
    return given


def _encode_outputs(outputs: dict[str, np.ndarray]) -> bytes:
    plain = {}
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            value = np.where(np.isfinite(value), value, None)  # JSON has no NaN: null
        plain[name] = value.tolist()
    return json.dumps(plain, separators=(",", ":")).encode()

