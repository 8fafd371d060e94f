"""Field checks of the telemetry payloads (docs/telemetry.md), used by ingest.parse_message.

Each check raises PayloadError with a short, fixed reason: never text taken from the payload, so
that counting rejected messages by reason cannot be flooded with distinct keys.

Speed matters (a monitor process parses thousands of windows per second), so the checks work on
whole lists at C speed where they can (``set(map(type, ...))``, ``map(dict.get, ...)``,
``min``/``sum``) instead of walking every value in Python.
"""
from __future__ import annotations

import math
import re
from itertools import chain, repeat

# Integers must fit a signed 64-bit column even after summing many of them; 2**53 - 1 is also the
# largest integer every JSON reader keeps exactly.
MAX_INT = 2**53 - 1
MAX_DEPTH = 16  # nesting allowed inside fields this reader does not know (and in samples)
ROLES = frozenset({"primary", "candidate", "shadow"})
BUNDLE_ID = re.compile(r"[0-9a-f]{64}")
# Short labels (names, versions, ids) end up in SQL columns: no control characters (PostgreSQL
# refuses NUL in text) and no lone surrogates (they cannot be encoded as UTF-8).
LABEL = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,256}")
_LABELS = re.compile(r"[^\x01-\x1f\x7f\ud800-\udfff]*")

_INT_ONLY = frozenset({int})
_OPTIONAL_INT = frozenset({int, type(None)})
_STR_ONLY = frozenset({str})
_DICT_ONLY = {dict}
_LIST_ONLY = {list}
_NUMERIC_ONLY = {"numeric"}
_NUMBER_TYPES = frozenset({int, float})
_OPTIONAL_NUMBER = frozenset({int, float, type(None)})
_CONTAINERS = frozenset({dict, list})
_FEATURE_KINDS = frozenset({"numeric", "categorical"})
_OUTPUT_KINDS = frozenset({"labels", "numeric"})
_COUNT_SHAPES = frozenset({("numeric", list), ("categorical", dict), ("labels", dict)})
_SERIES_TEXT = ("input", "output", "source")
_SERIES_KEYS = frozenset({"name", "input", "output", "column", "kind", "counts", "missing", "violations", "source"})
_REASON_PARTS = ("", "name", "kind", "counts", "column", "input")
_FEATURE_REASONS = {k: f"field:features{'.' + k if k else ''}" for k in _REASON_PARTS}
_OUTPUT_REASONS = {k: f"field:outputs{'.' + k if k else ''}" for k in _REASON_PARTS}
_WINDOW_KEYS = frozenset({"schema_version", "kind", "device_id", "seq", "agent", "bundle", "variant", "window",
                          "requests", "latency_ms", "features", "outputs", "accuracy", "system", "outbox",
                          "samples"})
_REQUESTS_REASONS = tuple((k, f"field:requests.{k}") for k in ("count", "rows", "errors", "rejected"))
_LATENCY_STATS = ("sum", "max", "p50", "p90", "p95", "p99")
_SYSTEM_REASONS = tuple((k, f"field:system.{k}") for k in ("cpu_percent", "rss_bytes", "temperature_c", "load1"))


class PayloadError(Exception):
    """A message that does not follow docs/telemetry.md; ``reason`` is short and fixed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- field checks ------------------------------------------------------------------------------
# Unknown fields are allowed (telemetry.md: readers ignore them) but may not nest deeply, so that
# whoever reads the stored payload later never hits Python's recursion limit. Small objects are
# depth-checked whole (their values are scalars: one C-level pass); in the long features list
# only unknown keys are, since every known one is type-checked.

def _obj(value, reason: str, depth: int = 2) -> dict:
    if type(value) is not dict:
        raise PayloadError(reason)
    _shallow(value, "too_deep", MAX_DEPTH - depth)
    return value


def _unknown_fields(obj: dict, known: frozenset, depth: int) -> None:
    for key in obj.keys() - known:
        value = obj[key]
        if type(value) in _CONTAINERS:
            _shallow(value, "too_deep", MAX_DEPTH - depth)


def _shallow(value, reason: str, limit: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``limit`` levels below ``value``."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise PayloadError(reason)
        children = item.values() if type(item) is dict else item
        if not _CONTAINERS.isdisjoint(map(type, children)):
            stack.extend((c, depth + 1) for c in children if type(c) in _CONTAINERS)


def _role(value) -> bool:
    return type(value) is str and value in ROLES


def _count(value, reason: str, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum or value > MAX_INT:
        raise PayloadError(reason)
    return value


def _finite(value) -> bool:
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind is int and -MAX_INT <= value <= MAX_INT


def _number(value, reason: str, optional: bool = False, minimum: float | None = None):
    if value is None and optional:
        return None
    if not _finite(value) or (minimum is not None and value < minimum):
        raise PayloadError(reason)
    return value


def _label(value, reason: str, empty: bool = False) -> str:
    if type(value) is not str or not (LABEL.fullmatch(value) or (empty and value == "")):
        raise PayloadError(reason)
    return value


def _labels(values: list, reason: str) -> None:
    """Many labels at once: one regex over the joined text (NUL is the separator)."""
    if not set(map(type, values)) <= _STR_ONLY or min(map(len, values)) < 1 or max(map(len, values)) > 256:
        raise PayloadError(reason)
    if "".join(values).isprintable():  # fast path; the regex also allows e.g. a non-breaking space
        return
    joined = "\x00".join(values)
    if joined.count("\x00") != len(values) - 1 or not _LABELS.fullmatch(joined):
        raise PayloadError(reason)


def _ints(values: list, reason: str) -> None:
    """Non-negative ints (bool excluded) at C speed; their sum within MAX_INT bounds each of them."""
    if values and (not set(map(type, values)) <= _INT_ONLY or min(values) < 0 or sum(values) > MAX_INT):
        raise PayloadError(reason)


def _numbers(values: list, reason: str) -> None:
    """Finite numbers: ints within MAX_INT (no bool) or floats (inf is beyond MAX_INT)."""
    if values and (not set(map(type, values)) <= _NUMBER_TYPES or min(values) < -MAX_INT
                   or max(values) > MAX_INT):
        raise PayloadError(reason)


def _agent(value) -> None:
    agent = _obj(value, "field:agent")
    _label(agent.get("version"), "field:agent.version")
    _label(agent.get("instance"), "field:agent.instance")


def _bundle(value, reason: str, depth: int = 2) -> dict:
    bundle = _obj(value, reason, depth)
    bundle_id = bundle.get("id")
    if type(bundle_id) is not str or not BUNDLE_ID.fullmatch(bundle_id):
        raise PayloadError(reason + ".id")
    # A manifest's model version may be empty (build_manifest allows it), its name too in old bundles.
    _label(bundle.get("name"), reason + ".name", empty=True)
    _label(bundle.get("version"), reason + ".version", empty=True)
    return bundle


def _bundles(value) -> None:
    if type(value) is not list or len(value) > 64:
        raise PayloadError("field:bundles")
    for entry in value:
        _bundle(entry, "field:bundles", 3)
        _label(entry.get("variant"), "field:bundles.variant")
        if not _role(entry.get("role")):
            raise PayloadError("field:bundles.role")


def _outbox(value) -> None:
    outbox = _obj(value, "field:outbox")
    _count(outbox.get("pending"), "field:outbox.pending")
    _count(outbox.get("dropped_total"), "field:outbox.dropped_total")


def _series(value, reasons: dict, kinds: frozenset) -> None:
    """features[] or outputs[]: entries with a name, a kind and counts (list or dict of ints).

    Each check runs over the whole list (map(dict.get, ...), set(map(type, ...))) so that 64
    features cost a handful of C-level passes instead of hundreds of Python operations.
    """
    if type(value) is not list:
        raise PayloadError(reasons[""])
    if not value:
        return
    if set(map(type, value)) != _DICT_ONLY:
        raise PayloadError(reasons[""])
    get = dict.get
    _labels(list(map(get, value, repeat("name"))), reasons["name"])
    kinds_list = list(map(get, value, repeat("kind")))
    if not set(map(type, kinds_list)) <= _STR_ONLY:  # an unhashable kind could not go in a set
        raise PayloadError(reasons["kind"])
    kind_set = set(kinds_list)
    if not kind_set <= kinds:
        raise PayloadError(reasons["kind"])
    counts = list(map(get, value, repeat("counts")))
    if kind_set == _NUMERIC_ONLY:
        if set(map(type, counts)) != _LIST_ONLY:
            raise PayloadError(reasons["counts"])
        flat = list(chain.from_iterable(counts))
    else:
        if not set(zip(kinds_list, map(type, counts))) <= _COUNT_SHAPES:
            raise PayloadError(reasons["counts"])
        flat = list(chain.from_iterable(c if type(c) is list else c.values() for c in counts))
    # missing/violations (absent on outputs) join the counts: one check for all of them.
    flat.extend(map(get, value, repeat("missing"), repeat(0)))
    flat.extend(map(get, value, repeat("violations"), repeat(0)))
    _ints(flat, reasons["counts"])
    texts = set(chain.from_iterable(map(type, map(get, value, repeat(key), repeat(""))) for key in _SERIES_TEXT))
    if not texts <= _STR_ONLY:
        raise PayloadError(reasons["input"])
    columns = list(map(get, value, repeat("column")))
    if not set(map(type, columns)) <= _OPTIONAL_INT:
        raise PayloadError(reasons["column"])
    columns = [c for c in columns if c is not None]
    if columns and min(columns) < 0:
        raise PayloadError(reasons["column"])
    if not all(map(_SERIES_KEYS.issuperset, value)):
        for entry in value:
            _unknown_fields(entry, _SERIES_KEYS, 3)


def _latency(value) -> None:
    latency = _obj(value, "field:latency_ms")
    buckets = latency.get("buckets")
    counts = latency.get("counts")
    if type(buckets) is not list or type(counts) is not list or len(counts) != len(buckets) + 1:
        raise PayloadError("field:latency_ms.buckets")
    _numbers(buckets, "field:latency_ms.buckets")
    if len(set(buckets)) != len(buckets) or buckets != sorted(buckets):
        raise PayloadError("field:latency_ms.buckets")
    _ints(counts, "field:latency_ms.counts")
    stats = [latency.get(key) for key in _LATENCY_STATS]
    if not set(map(type, stats)) <= _OPTIONAL_NUMBER:
        raise PayloadError("field:latency_ms.p95")
    stats = [s for s in stats if s is not None]
    if stats and (min(stats) < 0 or max(stats) > MAX_INT):
        raise PayloadError("field:latency_ms.p95")


def _accuracy(value) -> None:
    if value is None:
        return
    accuracy = _obj(value, "field:accuracy")
    labelled = _count(accuracy.get("labelled"), "field:accuracy.labelled")
    if accuracy.get("kind") == "labels":
        correct = _count(accuracy.get("correct"), "field:accuracy.correct")
        if correct > labelled:
            raise PayloadError("field:accuracy.correct")
    elif accuracy.get("kind") == "numeric":
        _number(accuracy.get("abs_error_sum"), "field:accuracy.abs_error_sum", minimum=0.0)
        _number(accuracy.get("squared_error_sum"), "field:accuracy.squared_error_sum", minimum=0.0)
    else:
        raise PayloadError("field:accuracy.kind")


def _system(value) -> None:
    system = _obj(value, "field:system")
    for key, reason in _SYSTEM_REASONS:
        _number(system.get(key), reason, optional=True)


def _samples(value) -> None:
    samples = _obj(value, "field:samples")
    rate = samples.get("rate")
    rows = samples.get("rows")
    if not _finite(rate) or not 0 < rate <= 1:
        raise PayloadError("field:samples.rate")
    if type(rows) is not list or len(rows) > 100 or not all(type(r) is dict for r in rows):
        raise PayloadError("field:samples.rows")


def check_window(data: dict) -> None:
    _count(data.get("seq"), "field:seq", minimum=1)
    _agent(data.get("agent"))
    _bundle(data.get("bundle"), "field:bundle")
    variant = _obj(data.get("variant"), "field:variant")
    _label(variant.get("name"), "field:variant.name")
    if not _role(variant.get("role")):
        raise PayloadError("field:variant.role")
    window = _obj(data.get("window"), "field:window")
    start, end = window.get("start"), window.get("end")
    if not _finite(start) or not _finite(end) or start > end or start < 0:
        raise PayloadError("field:window")
    requests = _obj(data.get("requests"), "field:requests")
    for key, reason in _REQUESTS_REASONS:
        _count(requests.get(key), reason)
    reasons = requests.get("rejected_reasons")
    if reasons is not None:
        reasons = _obj(reasons, "field:requests.rejected_reasons", 3)
        _ints(list(reasons.values()), "field:requests.rejected_reasons")
    _latency(data.get("latency_ms"))
    _series(data.get("features"), _FEATURE_REASONS, _FEATURE_KINDS)
    _series(data.get("outputs", []), _OUTPUT_REASONS, _OUTPUT_KINDS)
    _accuracy(data.get("accuracy"))
    _system(data.get("system"))
    _outbox(data.get("outbox"))
    if data.get("samples") is not None:
        _samples(data["samples"])
    if not data.keys() <= _WINDOW_KEYS:
        _unknown_fields(data, _WINDOW_KEYS, 1)


def check_heartbeat(data: dict) -> None:
    _number(data.get("ts"), "field:ts", minimum=0.0)
    _number(data.get("uptime_s"), "field:uptime_s", minimum=0.0)
    _agent(data.get("agent"))
    _bundles(data.get("bundles"))
    _count(data.get("last_seq"), "field:last_seq")
    _outbox(data.get("outbox"))
    _shallow(data, "too_deep")


def check_status(data: dict) -> None:
    if data.get("state") not in ("online", "offline"):
        raise PayloadError("field:state")
    _number(data.get("ts"), "field:ts", minimum=0.0)
    _agent(data.get("agent"))
    _bundles(data.get("bundles"))
    _shallow(data, "too_deep")
