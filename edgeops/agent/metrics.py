"""Prometheus counters of the agent, rendered as the text exposition format (version 0.0.4).

Counters are cumulative over the process's life (Prometheus computes rates), unlike the telemetry
windows, which reset every interval. Updates are a lock and a few integer additions, so the
request path pays next to nothing; rendering happens only when /metrics is scraped.
"""
from __future__ import annotations

import bisect
import os
import threading
import time

from .telemetry import LATENCY_BUCKETS_MS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS_S = tuple(b / 1000.0 for b in LATENCY_BUCKETS_MS)
NO_VARIANT = "none"  # requests refused before a variant was chosen (auth, size, content type)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._rejections: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list] = {}  # variant -> [bucket counts..., +Inf count, sum]
        self._feedback: dict[tuple[str, str], int] = {}
        self._range_warnings: dict[str, int] = {}
        self.shadow_dropped = 0
        self.windows = 0
        self.windows_lost = 0
        self.started = time.time()

    def request(self, variant: str, status: int, latency_s: float | None = None) -> None:
        key = (variant, str(status))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            if latency_s is not None:
                hist = self._latency.get(variant)
                if hist is None:
                    hist = self._latency[variant] = [0] * (len(_BUCKETS_S) + 1) + [0.0]
                hist[bisect.bisect_left(_BUCKETS_S, latency_s)] += 1
                hist[-1] += latency_s

    def rejection(self, variant: str, reason: str) -> None:
        key = (variant, reason)
        with self._lock:
            self._rejections[key] = self._rejections.get(key, 0) + 1

    def feedback(self, variant: str, result: str, count: int = 1) -> None:
        key = (variant, result)
        with self._lock:
            self._feedback[key] = self._feedback.get(key, 0) + count

    def range_warning(self, variant: str) -> None:
        with self._lock:
            self._range_warnings[variant] = self._range_warnings.get(variant, 0) + 1

    def count_shadow_drop(self) -> None:
        with self._lock:
            self.shadow_dropped += 1

    def count_window(self) -> None:
        with self._lock:
            self.windows += 1

    def count_lost_window(self) -> None:
        with self._lock:
            self.windows_lost += 1

    def render(self, *, models: list[dict], outbox: dict | None, mqtt_connected: bool | None) -> bytes:
        """The exposition text. ``models``: {variant, role, id, name, version} per loaded variant."""
        with self._lock:
            requests = dict(self._requests)
            rejections = dict(self._rejections)
            latency = {k: list(v) for k, v in self._latency.items()}
            feedback = dict(self._feedback)
            warnings = dict(self._range_warnings)
            shadow_dropped, windows, lost = self.shadow_dropped, self.windows, self.windows_lost
        out: list[str] = []
        _family(out, "edgeops_agent_requests_total", "counter", "HTTP requests to /v1/predict by variant and status",
                [({"variant": v, "status": s}, n) for (v, s), n in sorted(requests.items())])
        out.append("# HELP edgeops_agent_predict_latency_seconds Validation and inference time of accepted requests")
        out.append("# TYPE edgeops_agent_predict_latency_seconds histogram")
        for variant, hist in sorted(latency.items()):
            cumulative = 0
            for bound, count in zip(_BUCKETS_S + (float("inf"),), hist[:-1]):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f'edgeops_agent_predict_latency_seconds_bucket{_labels({"variant": variant, "le": le})} '
                           f"{cumulative}")
            out.append(f'edgeops_agent_predict_latency_seconds_sum{_labels({"variant": variant})} {hist[-1]!r}')
            out.append(f'edgeops_agent_predict_latency_seconds_count{_labels({"variant": variant})} {cumulative}')
        _family(out, "edgeops_agent_rejections_total", "counter", "Requests refused by input validation, by reason",
                [({"variant": v, "reason": r}, n) for (v, r), n in sorted(rejections.items())])
        _family(out, "edgeops_agent_range_warnings_total", "counter",
                "Accepted requests with values far outside the reference range (--range-check warn)",
                [({"variant": v}, n) for v, n in sorted(warnings.items())])
        _family(out, "edgeops_agent_feedback_total", "counter", "Feedback entries by variant and result",
                [({"variant": v, "result": r}, n) for (v, r), n in sorted(feedback.items())])
        _family(out, "edgeops_agent_shadow_dropped_total", "counter",
                "Requests the shadow variant skipped because its queue was full", [({}, shadow_dropped)])
        _family(out, "edgeops_agent_telemetry_windows_total", "counter", "Telemetry windows written to the outbox",
                [({}, windows)])
        _family(out, "edgeops_agent_telemetry_windows_lost_total", "counter",
                "Telemetry windows that could not be written to the outbox (e.g. a full disk)", [({}, lost)])
        if outbox is not None:
            _family(out, "edgeops_agent_outbox_pending", "gauge", "Telemetry windows not yet acknowledged by the broker",
                    [({}, outbox.get("pending", 0))])
            _family(out, "edgeops_agent_outbox_dropped_total", "counter",
                    "Telemetry windows dropped because the outbox was full", [({}, outbox.get("dropped_total", 0))])
        if mqtt_connected is not None:
            _family(out, "edgeops_agent_mqtt_connected", "gauge", "1 while connected to the MQTT broker",
                    [({}, int(bool(mqtt_connected)))])
        _family(out, "edgeops_agent_model_info", "gauge", "The loaded bundles (value 1)",
                [({"variant": m["variant"], "role": m["role"], "bundle_id": m["id"], "name": m["name"],
                   "version": m["version"]}, 1) for m in models])
        rss = resident_bytes()
        if rss is not None:
            _family(out, "process_resident_memory_bytes", "gauge", "Resident memory of the agent process", [({}, rss)])
        _family(out, "process_start_time_seconds", "gauge", "Start time of the agent (Unix seconds)",
                [({}, self.started)])
        return ("\n".join(out) + "\n").encode("utf-8")


def _family(out: list[str], name: str, kind: str, help_text: str, samples) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{_labels(labels)} {value!r}" if isinstance(value, float) else
                   f"{name}{_labels(labels)} {value}")


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """Current resident set size (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return None
