"""A fast path for window payloads: typed decoding with msgspec, checked in C as it decodes.

Decoding a 9 KB window into dicts and then walking it (ingest_checks.py) costs about 150-200 µs
of CPU, almost all of it creating and visiting some 1,500 Python objects. msgspec decodes the
same text straight into the typed structures below, checking every type and bound on the way,
in about a tenth of that.

The rule that keeps this safe: this path may only ever be *stricter* than ingest_checks.py.
It accepts exactly the documented window (docs/telemetry.md) with no unknown fields; anything
else (an unknown field from a newer agent, a value near a limit, a sampled-rows section, any
error at all) returns None and the full checks in ingest_checks.py decide, with their exact
reason. tests/test_fleet_ingest_fast.py checks "accepted here => accepted there" on every
hostile payload of the ingest tests and on thousands of random mutations of valid windows.
"""
from __future__ import annotations

from itertools import chain
from typing import Annotated, Literal, Union

import numpy as np

try:
    import msgspec
except ImportError:  # the monitor extra installs it; without it every window takes the full checks
    msgspec = None

from .ingest_checks import BUNDLE_ID, LABEL, MAX_INT, PayloadError, _labels

__all__ = ["available", "decode_window", "to_builtins"]

if msgspec is not None:
    Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
    Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    # Floats: msgspec refuses NaN and inf literals; 1e999 decodes to inf, which the bounds refuse.
    Number = Annotated[float, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]
    NonNegative = Annotated[float, msgspec.Meta(ge=0, le=MAX_INT)]
    Label = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    Label0 = Annotated[str, msgspec.Meta(max_length=256)]

    # gc=False: decoded windows are trees (no reference cycles), so the cycle collector need
    # not track the thousands of structs a batch creates.
    class _Struct(msgspec.Struct, forbid_unknown_fields=True, gc=False):
        pass

    class Agent(_Struct):
        version: Label
        instance: Label

    class Bundle(_Struct):
        id: Annotated[str, msgspec.Meta(min_length=64, max_length=64)]
        name: Label0
        version: Label0

    class Variant(_Struct):
        name: Label
        role: Literal["primary", "candidate", "shadow"]

    class Span(_Struct):
        start: NonNegative
        end: NonNegative

    class Requests(_Struct):
        count: Count
        rows: Count
        errors: Count
        rejected: Count
        rejected_reasons: Union[dict[str, Count], None] = None

    class Latency(_Struct):
        buckets: list[Number]
        counts: list[Count]
        count: Union[Count, None] = None
        sum: Union[NonNegative, None] = None
        max: Union[NonNegative, None] = None
        p50: Union[NonNegative, None] = None
        p90: Union[NonNegative, None] = None
        p95: Union[NonNegative, None] = None
        p99: Union[NonNegative, None] = None

    class Series(_Struct):
        name: Label
        kind: Literal["numeric", "categorical", "labels"]
        counts: Union[list[Count], dict[str, Count]]
        input: str = ""  # ingest_checks refuses null here (but allows a null column)
        output: str = ""
        source: str = ""
        column: Union[Count, None] = None
        missing: Count = 0
        violations: Count = 0

    class Accuracy(_Struct):
        kind: Literal["labels", "numeric"]
        labelled: Count
        correct: Union[Count, None] = None
        abs_error_sum: Union[NonNegative, None] = None
        squared_error_sum: Union[NonNegative, None] = None

    class System(_Struct):
        cpu_percent: Union[Number, None] = None
        rss_bytes: Union[Number, None] = None
        temperature_c: Union[Number, None] = None
        load1: Union[Number, None] = None

    class Outbox(_Struct):
        pending: Count
        dropped_total: Count

    class Window(_Struct):
        schema_version: Literal[1]
        kind: Literal["window"]
        device_id: str
        seq: Seq
        agent: Agent
        bundle: Bundle
        variant: Variant
        window: Span
        requests: Requests
        latency_ms: Latency
        features: list[Series]
        system: System
        outbox: Outbox
        outputs: list[Series] = []
        accuracy: Union[Accuracy, None] = None

    _DECODER = msgspec.json.Decoder(Window)


def available() -> bool:
    return msgspec is not None


def to_builtins(value):
    """Plain dicts/lists of part of a decoded window (for the few sections sent as they are)."""
    return msgspec.to_builtins(value)


_FEATURE_KINDS = {"numeric": list, "categorical": dict}
_OUTPUT_KINDS = {"labels": dict, "numeric": list}


def decode_window(text: str | bytes):
    """(typed window, packed numeric sections) when it passes every check here, else None.

    ``packed``: {section: (names, bins per entry, all counts as one int64 array)} for each section
    whose entries are all numeric (what the monitor's drift counts read).
    """
    if msgspec is None:
        return None
    try:
        w = _DECODER.decode(text)
    except (msgspec.DecodeError, RecursionError, ValueError):  # ValueError: also bytes that are not UTF-8
        return None
    try:
        if not _cross_checks(w):
            return None
        packed = {}
        for section, entries, kinds in (("features", w.features, _FEATURE_KINDS),
                                        ("outputs", w.outputs, _OUTPUT_KINDS)):
            ok, pack = _series(entries, kinds)
            if not ok:
                return None
            if pack is not None:
                packed[section] = pack
    except PayloadError:
        return None
    return w, packed


def _cross_checks(w) -> bool:
    """What a type cannot say: relations between fields, label characters, sums within bounds."""
    if not (LABEL.fullmatch(w.agent.version) and LABEL.fullmatch(w.agent.instance)
            and LABEL.fullmatch(w.variant.name)):
        return False
    b = w.bundle
    if not BUNDLE_ID.fullmatch(b.id) or not all(LABEL.fullmatch(s) or s == "" for s in (b.name, b.version)):
        return False
    if w.window.start > w.window.end:
        return False
    lat = w.latency_ms
    buckets = lat.buckets
    if len(lat.counts) != len(buckets) + 1 or len(set(buckets)) != len(buckets) or buckets != sorted(buckets) \
            or sum(lat.counts) > MAX_INT:
        return False
    reasons = w.requests.rejected_reasons
    if reasons and sum(reasons.values()) > MAX_INT:
        return False
    acc = w.accuracy
    if acc is not None:
        if acc.kind == "labels" and (acc.correct is None or acc.correct > acc.labelled):
            return False
        if acc.kind == "numeric" and (acc.abs_error_sum is None or acc.squared_error_sum is None):
            return False
    return True


def _series(entries: list, kinds: dict) -> tuple[bool, tuple | None]:
    """(valid, packed or None): kinds match their counts' shape, names are labels, the sum of all
    counts stays within MAX_INT. A section of numeric entries only comes back packed."""
    if not entries:
        return True, None
    counts = [e.counts for e in entries]
    kind_list = [e.kind for e in entries]
    if set(map(kinds.get, kind_list)) == _LIST_ONLY and set(map(type, counts)) == _LIST_ONLY:
        lengths = tuple(map(len, counts))
        flat = np.fromiter(chain.from_iterable(counts), dtype=np.int64, count=sum(lengths))
        extra = [e.missing + e.violations for e in entries]
        # An upper bound of the sum of all counts, missing and violations (in Python ints, which
        # do not overflow): when it is within MAX_INT so is the sum. Counts are small, so this
        # holds; otherwise the full checks add them up exactly.
        top = int(flat.max()) if flat.size else 0
        if top * flat.size + max(extra) * len(extra) > MAX_INT:
            return False, None
        _labels([e.name for e in entries], "name")  # raises PayloadError
        return True, (tuple(e.name for e in entries), lengths, flat)
    if any(type(c) is not kinds.get(k) for c, k in zip(counts, kind_list)):
        return False, None
    _labels([e.name for e in entries], "name")
    total = sum(e.missing + e.violations for e in entries)
    for c in counts:
        total += sum(c) if type(c) is list else sum(c.values())
    return total <= MAX_INT, None


_LIST_ONLY = {list}
