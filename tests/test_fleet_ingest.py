"""parse_message: the payloads of docs/telemetry.md are accepted, everything else is refused with a
short reason (hostile inputs included), and what the real agent code publishes parses."""
from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest

from edgeops.fleet.ingest import MAX_PAYLOAD_BYTES, Message, PayloadError, parse_message

BUNDLE_ID = hashlib.sha256(b"manifest").hexdigest()
BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
PREFIX = "edgeops"


def topic(device_id: str, kind: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/v1/devices/{device_id}/{kind}"


def make_window(device_id: str = "pi-kitchen-01", seq: int = 1, *, end: float = 1795341660.0,
                n_features: int = 8, instance: str = "4f1c0a9b", bundle_id: str = BUNDLE_ID,
                role: str = "primary", variant: str = "primary", p95: float | None = 0.95,
                requests: int = 118) -> dict:
    """A window payload as in telemetry.md (numeric and categorical features, a labels output)."""
    features = [{"name": f"x[{i}]", "input": "x", "column": i, "kind": "numeric",
                 "counts": [(i + j) % 7 for j in range(11)], "missing": 0, "violations": i % 2}
                for i in range(n_features)]
    features.append({"name": "colour", "input": "colour", "column": None, "kind": "categorical",
                     "counts": {"red": 120, "blue": 110, "__unseen__": 6}, "missing": 0, "violations": 0})
    return {
        "schema_version": 1, "kind": "window", "device_id": device_id, "seq": seq,
        "agent": {"version": "0.1.0", "instance": instance},
        "bundle": {"id": bundle_id, "name": "digits", "version": "1.0"},
        "variant": {"name": variant, "role": role},
        "window": {"start": end - 60.0, "end": end},
        "requests": {"count": requests, "rows": 2 * requests, "errors": 0, "rejected": 3,
                     "rejected_reasons": {"range": 2, "shape": 1}},
        "latency_ms": {"buckets": BUCKETS, "counts": [0, 3, 90, 20, 5] + [0] * 12, "sum": 55.2, "max": 2.1,
                       "p50": 0.41, "p90": 0.8, "p95": p95, "p99": 1.9},
        "features": features,
        "outputs": [{"name": "label", "output": "label", "column": None, "kind": "labels",
                     "counts": {"0": 30, "1": 25, "2": 181}}],
        "accuracy": {"kind": "labels", "labelled": 40, "correct": 37},
        "system": {"cpu_percent": 12.5, "rss_bytes": 61341696, "temperature_c": None, "load1": 0.4},
        "outbox": {"pending": 0, "dropped_total": 0},
    }


def make_heartbeat(device_id: str = "pi-kitchen-01", ts: float = 1795341630.5, instance: str = "4f1c0a9b") -> dict:
    return {"schema_version": 1, "kind": "heartbeat", "device_id": device_id, "ts": ts, "uptime_s": 3600.2,
            "agent": {"version": "0.1.0", "instance": instance},
            "bundles": [{"id": BUNDLE_ID, "name": "digits", "version": "1.0", "variant": "primary",
                         "role": "primary"}],
            "last_seq": 42, "outbox": {"pending": 0, "dropped_total": 0}}


def make_status(device_id: str = "pi-kitchen-01", state: str = "online", ts: float = 1795341600.0) -> dict:
    return {"schema_version": 1, "kind": "status", "device_id": device_id, "state": state, "ts": ts,
            "agent": {"version": "0.1.0", "instance": "4f1c0a9b"},
            "bundles": [{"id": BUNDLE_ID, "name": "digits", "version": "1.0", "variant": "primary",
                         "role": "primary"}]}


def encode(payload) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def parsed_window(device_id="pi-kitchen-01", seq=1, **kw) -> Message:
    return parse_message(topic(device_id, "telemetry"), encode(make_window(device_id, seq, **kw)))


def test_documented_payloads_parse():
    window = make_window()
    m = parse_message(topic("pi-kitchen-01", "telemetry"), encode(window), received=123.5)
    assert (m.kind, m.device_id, m.received) == ("window", "pi-kitchen-01", 123.5)
    assert m.payload == window and json.loads(m.text) == window
    hb = parse_message(topic("pi-kitchen-01", "heartbeat"), encode(make_heartbeat()))
    assert hb.kind == "heartbeat" and hb.payload["last_seq"] == 42
    st = parse_message(topic("pi-kitchen-01", "status"), encode(make_status(state="offline")))
    assert st.kind == "status" and st.payload["state"] == "offline"
    # another prefix; bytearray/memoryview payloads as some clients hand them over
    m2 = parse_message(topic("d.1_x-Y", "telemetry", "acme/site"), bytearray(encode(make_window("d.1_x-Y"))),
                       prefix="acme/site")
    assert m2.device_id == "d.1_x-Y"
    assert parse_message(topic("pi-kitchen-01", "heartbeat"), memoryview(encode(make_heartbeat()))).kind == "heartbeat"


def test_empty_retained_status_means_forget_the_device():
    m = parse_message(topic("old-device", "status"), b"")
    assert (m.kind, m.device_id, m.payload) == ("status", "old-device", {})
    for kind in ("telemetry", "heartbeat"):
        with pytest.raises(PayloadError) as err:
            parse_message(topic("old-device", kind), b"")
        assert err.value.reason == "empty"


def test_unknown_fields_are_ignored_and_optional_ones_may_be_absent():
    w = make_window()
    w["future_field"] = {"nested": [1, 2, {"a": None}]}
    w["features"][0]["future"] = "x"
    w["latency_ms"]["count"] = 118
    w["agent"]["build"] = "abc"
    w["accuracy"] = None
    del w["requests"]["rejected_reasons"]
    del w["outputs"]
    w["bundle"]["version"] = ""   # build_manifest allows an empty model version
    w["samples"] = {"rate": 0.5, "rows": [{"x": [[0.1, 0.2]], "colour": "red"}]}
    w["latency_ms"].update({"p50": None, "p90": None, "p95": None, "p99": None})
    assert parse_message(topic("pi-kitchen-01", "telemetry"), encode(w)).payload == w


def _mutated(mutate):
    w = make_window()
    mutate(w)
    return encode(w)


def _set(path, value):
    def mutate(w):
        target = w
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _deep(n: int, leaf="1") -> str:
    return "[" * n + leaf + "]" * n


WINDOW_TOPIC = topic("pi-kitchen-01", "telemetry")
VALID = encode(make_window())

HOSTILE = [
    # (name, topic, payload, reason)
    ("not utf-8", WINDOW_TOPIC, b'{"kind": "\xff\xfe"}', "utf8"),
    ("over 1 MiB", WINDOW_TOPIC, VALID[:-1] + b"," + b'"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}', "too_large"),
    ("not json", WINDOW_TOPIC, b"{not json", "json"),
    ("trailing garbage", WINDOW_TOPIC, VALID + b"xyz", "json"),
    ("utf-8 BOM", WINDOW_TOPIC, b"\xef\xbb\xbf" + VALID, "json"),
    ("a list", WINDOW_TOPIC, b"[1, 2]", "not_object"),
    ("a string", WINDOW_TOPIC, b'"window"', "not_object"),
    ("deep list nesting", WINDOW_TOPIC, _deep(200_000).encode(), "too_deep"),
    ("deep object nesting", WINDOW_TOPIC, ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(), "too_deep"),
    ("deep unknown field", WINDOW_TOPIC, VALID[:-1] + b',"x":' + _deep(60).encode() + b"}", "too_deep"),
    ("deep field in a known object", WINDOW_TOPIC, _mutated(_set(("agent", "x"), json.loads(_deep(40)))), "too_deep"),
    ("deep unknown field in a feature", WINDOW_TOPIC,
     _mutated(lambda w: w["features"][2].update(x=json.loads(_deep(40)))), "too_deep"),
    ("feature input not text", WINDOW_TOPIC,
     _mutated(lambda w: w["features"][2].update(input=json.loads(_deep(40)))), "field:features.input"),
    ("deep field unused by the accuracy kind", WINDOW_TOPIC,
     _mutated(_set(("accuracy", "abs_error_sum"), json.loads(_deep(40)))), "too_deep"),
    ("deep latency count", WINDOW_TOPIC, _mutated(_set(("latency_ms", "count"), json.loads(_deep(40)))), "too_deep"),
    ("deep samples", WINDOW_TOPIC,
     _mutated(_set(("samples",), {"rate": 1.0, "rows": [{"x": json.loads(_deep(40))}]})), "too_deep"),
    ("NaN literal", WINDOW_TOPIC, VALID.replace(b'"p95":0.95', b'"p95":NaN'), "nan"),
    ("Infinity literal", WINDOW_TOPIC, VALID.replace(b'"sum":55.2', b'"sum":Infinity'), "nan"),
    ("-Infinity literal", WINDOW_TOPIC, VALID.replace(b'"max":2.1', b'"max":-Infinity'), "nan"),
    ("overflowing float", WINDOW_TOPIC, VALID.replace(b'"end":1795341660.0', b'"end":1e999'), "field:window"),
    ("5000-digit integer", WINDOW_TOPIC, VALID.replace(b'"seq":1', b'"seq":' + b"9" * 5000), "json"),
    ("seq beyond 2**53", WINDOW_TOPIC, _mutated(_set(("seq",), 2**63)), "field:seq"),
    ("seq 0", WINDOW_TOPIC, _mutated(_set(("seq",), 0)), "field:seq"),
    ("seq as text", WINDOW_TOPIC, _mutated(_set(("seq",), "1")), "field:seq"),
    ("seq as float", WINDOW_TOPIC, _mutated(_set(("seq",), 1.0)), "field:seq"),
    ("seq as bool", WINDOW_TOPIC, _mutated(_set(("seq",), True)), "field:seq"),
    ("negative request count", WINDOW_TOPIC, _mutated(_set(("requests", "count"), -1)), "field:requests.count"),
    ("bool request count", WINDOW_TOPIC, _mutated(_set(("requests", "errors"), False)), "field:requests.errors"),
    ("negative feature count", WINDOW_TOPIC,
     _mutated(lambda w: w["features"][3]["counts"].__setitem__(2, -5)), "field:features.counts"),
    ("bool in feature counts", WINDOW_TOPIC,
     _mutated(lambda w: w["features"][1]["counts"].__setitem__(0, True)), "field:features.counts"),
    ("float in feature counts", WINDOW_TOPIC,
     _mutated(lambda w: w["features"][1]["counts"].__setitem__(0, 1.5)), "field:features.counts"),
    ("bool in categorical counts", WINDOW_TOPIC,
     _mutated(lambda w: w["features"][-1]["counts"].update(red=True)), "field:features.counts"),
    ("categorical counts as a list", WINDOW_TOPIC,
     _mutated(lambda w: w["features"][-1].update(counts=[1, 2])), "field:features.counts"),
    ("negative missing", WINDOW_TOPIC, _mutated(lambda w: w["features"][0].update(missing=-1)),
     "field:features.counts"),
    ("unknown feature kind", WINDOW_TOPIC, _mutated(lambda w: w["features"][0].update(kind="image")),
     "field:features.kind"),
    ("NUL in a feature name", WINDOW_TOPIC, _mutated(lambda w: w["features"][0].update(name="x\x00y")),
     "field:features.name"),
    ("features not a list", WINDOW_TOPIC, _mutated(_set(("features",), {"x": 1})), "field:features"),
    ("feature not an object", WINDOW_TOPIC, _mutated(lambda w: w["features"].append(3)), "field:features"),
    ("lone surrogate in variant name", WINDOW_TOPIC,
     VALID.replace(b'"name":"primary"', b'"name":"\\ud800"'), "field:variant.name"),
    ("unknown role", WINDOW_TOPIC, _mutated(_set(("variant", "role"), "boss")), "field:variant.role"),
    ("bundle id upper case", WINDOW_TOPIC, _mutated(_set(("bundle", "id"), BUNDLE_ID.upper())), "field:bundle.id"),
    ("bundle id short", WINDOW_TOPIC, _mutated(_set(("bundle", "id"), "abc")), "field:bundle.id"),
    ("no agent", WINDOW_TOPIC, _mutated(lambda w: w.pop("agent")), "field:agent"),
    ("start after end", WINDOW_TOPIC, _mutated(_set(("window", "start"), 1795341661.0)), "field:window"),
    ("latency counts too short", WINDOW_TOPIC, _mutated(lambda w: w["latency_ms"]["counts"].pop()),
     "field:latency_ms.buckets"),
    ("negative p95", WINDOW_TOPIC, _mutated(_set(("latency_ms", "p95"), -1.0)), "field:latency_ms.p95"),
    ("p95 as text", WINDOW_TOPIC, _mutated(_set(("latency_ms", "p95"), "1")), "field:latency_ms.p95"),
    ("more correct than labelled", WINDOW_TOPIC, _mutated(_set(("accuracy", "correct"), 41)), "field:accuracy.correct"),
    ("system value as text", WINDOW_TOPIC, _mutated(_set(("system", "load1"), "high")), "field:system.load1"),
    ("outbox missing", WINDOW_TOPIC, _mutated(lambda w: w.pop("outbox")), "field:outbox"),
    ("schema version 2", WINDOW_TOPIC, _mutated(_set(("schema_version",), 2)), "schema_version"),
    ("schema version true", WINDOW_TOPIC, _mutated(_set(("schema_version",), True)), "schema_version"),
    ("kind of another topic", WINDOW_TOPIC, encode(make_heartbeat()), "kind"),
    ("device id mismatch", WINDOW_TOPIC, encode(make_window("someone-else")), "device_id"),
    ("wildcard device id in payload", topic("a", "telemetry"), encode(make_window("+")), "device_id"),
    ("wildcard + in topic", topic("+", "telemetry"), encode(make_window("+")), "topic_device_id"),
    ("wildcard # in topic", topic("#", "telemetry"), encode(make_window("#")), "topic_device_id"),
    ("device id too long", topic("d" * 65, "telemetry"), encode(make_window("d" * 65)), "topic_device_id"),
    ("extra topic level", "edgeops/v1/devices/a/b/telemetry", VALID, "topic"),
    ("unknown topic kind", topic("pi-kitchen-01", "alerts"), VALID, "topic"),
    ("other prefix", topic("pi-kitchen-01", "telemetry", "other"), VALID, "topic"),
    ("heartbeat negative last_seq", topic("pi-kitchen-01", "heartbeat"),
     encode({**make_heartbeat(), "last_seq": -1}), "field:last_seq"),
    ("heartbeat ts as text", topic("pi-kitchen-01", "heartbeat"), encode({**make_heartbeat(), "ts": "now"}),
     "field:ts"),
    ("status unknown state", topic("pi-kitchen-01", "status"), encode({**make_status(), "state": "maybe"}),
     "field:state"),
    ("status bundle role", topic("pi-kitchen-01", "status"),
     encode({**make_status(), "bundles": [{"id": BUNDLE_ID, "name": "d", "version": "1", "variant": "p",
                                           "role": 1}]}), "field:bundles.role"),
    ("status deep nesting", topic("pi-kitchen-01", "status"),
     encode({**make_status(), "x": json.loads(_deep(40))}), "too_deep"),
]


@pytest.mark.parametrize("name, topic_, payload, reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_payloads_are_refused_with_a_short_reason(name, topic_, payload, reason):
    with pytest.raises(PayloadError) as err:
        parse_message(topic_, payload)
    assert err.value.reason == reason


def test_the_valid_base_of_the_hostile_table_parses():
    # Guards the table above: each case differs from an accepted payload by its one defect.
    assert parse_message(WINDOW_TOPIC, VALID).kind == "window"
    assert parse_message(WINDOW_TOPIC, VALID[:-1] + b',"x":' + _deep(10).encode() + b"}").kind == "window"


def test_a_payload_of_exactly_one_mib_is_not_refused_for_its_size():
    payload = VALID[:-1] + b',"pad":"'
    payload += b"x" * (MAX_PAYLOAD_BYTES - len(payload) - 2) + b'"}'
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert parse_message(WINDOW_TOPIC, payload).payload["pad"].startswith("x")


def test_what_the_agent_publishes_parses():
    """The real agent code (edgeops.agent.telemetry) builds windows this reader accepts."""
    from edgeops.agent.telemetry import WindowStats, build_window_payload, encode_payload
    from edgeops.bundle.refstats import reference_stats

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    colour = np.array(["red", "blue", "green"] * 166 + ["red", "red"], dtype=object)
    label = rng.integers(0, 3, size=500)
    refstats = reference_stats({"x": x, "colour": colour}, {"label": label})
    stats = WindowStats(refstats, sample_rate=1.0, seed=1)
    for _ in range(5):
        stats.record_request({"x": x[:4] + 3.0, "colour": np.array(["red", "mauve", "blue", "red"], dtype=object)},
                             {"label": label[:4]}, latency_ms=1.5)
    stats.record_rejection("range", ("x[0]",))
    stats.record_error(latency_ms=2.0)
    stats.record_feedback(["0", "1"], ["0", "2"])
    body = stats.snapshot_and_reset()
    payload = build_window_payload(
        device_id="pi-1", seq=7, agent={"version": "0.1.0", "instance": "ab12"},
        bundle={"id": BUNDLE_ID, "name": "digits", "version": "1.0"},
        variant={"name": "primary", "role": "primary"}, start=1000.0, end=1060.0, body=body,
        system={"cpu_percent": None, "rss_bytes": 1, "temperature_c": None, "load1": 0.1},
        outbox={"pending": 1, "dropped_total": 0})
    m = parse_message(topic("pi-1", "telemetry"), encode_payload(payload))
    assert m.payload["seq"] == 7 and m.payload["requests"]["count"] >= 5
    # and an empty window (no requests: null percentiles)
    empty = build_window_payload(
        device_id="pi-1", seq=8, agent={"version": "0.1.0", "instance": "ab12"},
        bundle={"id": BUNDLE_ID, "name": "digits", "version": ""}, variant={"name": "primary", "role": "shadow"},
        start=1060.0, end=1060.0, body=WindowStats(refstats).snapshot_and_reset(),
        system={"cpu_percent": None, "rss_bytes": None, "temperature_c": None, "load1": None},
        outbox={"pending": 0, "dropped_total": 3})
    assert parse_message(topic("pi-1", "telemetry"), encode_payload(empty)).payload["seq"] == 8


def test_reasons_never_carry_payload_text():
    reasons = set()
    for name, topic_, payload, _ in HOSTILE:
        try:
            parse_message(topic_, payload)
        except PayloadError as exc:
            reasons.add(exc.reason)
    assert all(len(r) < 40 and r.replace("_", "").replace(":", "").replace(".", "").isalnum() for r in reasons)
    assert not any("someone" in r or "boss" in r for r in reasons)


def test_message_from_code_has_no_text_and_is_comparable():
    w = make_window()
    a = Message("window", "pi-kitchen-01", copy.deepcopy(w), 1.0)
    b = parse_message(WINDOW_TOPIC, encode(w), received=1.0)
    assert a.text is None and a == b  # text is not part of equality
