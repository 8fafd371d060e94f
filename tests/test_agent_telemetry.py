"""Telemetry windows of the agent, checked against independent numpy computations on real data."""
from __future__ import annotations

import json
import math
import sys
import threading
from collections import Counter

import numpy as np
import pytest

from edgeops.agent import sketches, telemetry
from edgeops.agent.system import SystemSampler, hottest_zone_celsius, parse_cpu_seconds
from edgeops.agent.telemetry import (LATENCY_BUCKETS_MS, OTHER, REJECT_REASONS, UNSEEN, FeedbackCache, WindowStats,
                                     bin_numeric, build_window_payload, count_categories, encode_payload,
                                     prediction_values)
from edgeops.bundle.refstats import reference_stats
from edgeops.errors import DataError

COLOURS = np.array(["red", "green", "blue"])
CITIES = np.array([f"city{i:02d}" for i in range(60)])  # > 50 categories: the reference has __other__


def make_data(rng, n, shift=0.0):
    x = rng.normal(shift, 1.0, size=(n, 4))
    x[rng.random(n) < 0.1, 2] = np.nan  # the reference has missing values in x[2]
    x[:, 3] = rng.integers(0, 3, size=n)  # few distinct values: deduplicated edges, padding in the group
    feeds = {
        "x": x,
        "colour": rng.choice(COLOURS, size=n),
        "city": rng.choice(CITIES, size=n).astype(object),
        "img": rng.random((n, 1, 6, 6)).astype(np.float32) + shift,
        "scalar": rng.exponential(1.0, size=(n, 1)),
    }
    probs = rng.random((n, 12)).astype(np.float32)
    outputs = {
        "label": rng.integers(0, 4, size=n).astype(np.int64),
        "score": rng.normal(shift, 1.0, size=(n, 2)),
        "probs": probs,
        "value": rng.normal(size=n).astype(np.float32),
    }
    return feeds, outputs


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(1)
    feeds, outputs = make_data(rng, 600)
    return reference_stats(feeds, outputs)


def expected_categories(values, ref_categories):
    """Independent of telemetry.py: the OTHER/UNSEEN rule of docs/telemetry.md, spelled out."""
    counts = {k: 0 for k in ref_categories}
    missing = 0
    for v in list(np.asarray(values, dtype=object).reshape(-1)):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            missing += 1
            continue
        key = str(v)
        if key not in ref_categories:
            key = OTHER if OTHER in ref_categories else UNSEEN
        counts[key] = counts.get(key, 0) + 1
    return counts, missing


def histogram(values, edges):
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    present = values[~np.isnan(values)]
    counts, _ = np.histogram(present, bins=np.concatenate(([-np.inf], edges, [np.inf])))
    return counts.tolist(), int(np.isnan(values).sum())


def test_bin_numeric_matches_numpy_histogram_including_edges():
    rng = np.random.default_rng(2)
    edges = np.quantile(rng.normal(size=1000), np.linspace(0, 1, 11)[1:-1])
    values = np.concatenate([rng.normal(size=500), edges, edges, [-np.inf, np.inf, np.nan, np.nan],
                             np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    expected, missing = histogram(values, edges)
    assert bin_numeric(values, edges.tolist()).tolist() == expected
    assert missing == 2
    # float32 values are compared as float64, like refstats does (astype(float64) before histogram)
    as32 = values.astype(np.float32)
    assert bin_numeric(as32, edges).tolist() == histogram(as32.astype(np.float64), edges)[0]
    # a value equal to an edge goes to the bin the edge opens (left-closed)
    assert bin_numeric([edges[3]], edges).tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert bin_numeric([1.0, 2.0], []).tolist() == [2]


def column_values(data, column):
    """One refstats column of one request's array, read the way refstats reads it."""
    data = np.asarray(data)
    return data.reshape(-1) if column is None else data.reshape(len(data), -1)[:, column]


def expected_counts(reference, requests):
    """Independent of telemetry.py: np.histogram and the category rule over all requests' values.
    Returns ([(counts, missing)] per feature, [counts] per output). Categories are concatenated as
    Python objects: a value keeps the text it has in its own request."""
    features, outputs = [], []
    for ref in reference["features"]:
        values = np.concatenate([column_values(f[ref["input"]], ref["column"]).astype(object)
                                 for f, _ in requests])
        features.append(histogram(values, ref["edges"]) if ref["kind"] == "numeric"
                        else expected_categories(values, ref["categories"]))
    for ref in reference["outputs"]:
        if ref["kind"] == "numeric":
            values = np.concatenate([column_values(o[ref["output"]], ref.get("column")) for _, o in requests])
            outputs.append(histogram(values, ref["edges"])[0])
        else:
            argmax = ref["source"] == "argmax"
            values = np.concatenate([np.argmax(o[ref["output"]], axis=1) if argmax
                                     else np.asarray(o[ref["output"]], dtype=object) for _, o in requests])
            outputs.append(expected_categories(values, ref["categories"])[0])
    return features, outputs


def assert_counts(body, reference, requests):
    features, outputs = expected_counts(reference, requests)
    for ref, got, (counts, missing) in zip(reference["features"], body["features"], features):
        assert got["counts"] == counts, ref["name"]
        assert got["missing"] == missing, ref["name"]
    for ref, got, counts in zip(reference["outputs"], body["outputs"], outputs):
        assert got["counts"] == counts, ref["name"]


@pytest.mark.parametrize("compare_edges, batch_requests, batch_rows", [
    (sketches._COMPARE_EDGES, telemetry.BATCH_REQUESTS, telemetry.BATCH_ROWS),
    (0, telemetry.BATCH_REQUESTS, telemetry.BATCH_ROWS),  # the per-column searchsorted path (many edges)
    (sketches._COMPARE_EDGES, 3, 20),  # batches binned mid-window; requests of >= 20 rows binned alone
])
def test_window_counts_match_an_independent_computation(reference, monkeypatch, compare_edges, batch_requests,
                                                        batch_rows):
    monkeypatch.setattr(sketches, "_COMPARE_EDGES", compare_edges)
    monkeypatch.setattr(telemetry, "BATCH_REQUESTS", batch_requests)
    monkeypatch.setattr(telemetry, "BATCH_ROWS", batch_rows)
    rng = np.random.default_rng(3)
    stats = WindowStats(reference)
    requests = []
    for i, n in enumerate([1, 3, 17, 1, 64, 5, 2, 30]):
        feeds, outputs = make_data(rng, n, shift=0.3 * (i % 3))
        if i == 2:  # values exactly on the reference edges, NaN, inf; unseen and missing categories
            ref = {f["name"]: f for f in reference["features"]}
            edges = ref["x[0]"]["edges"]
            feeds["x"][: min(len(edges), n), 0] = edges[:n]
            feeds["x"][0, 1] = np.inf
            feeds["x"][1, 1] = -np.inf
            feeds["img"][0, 0, 0, :3] = [np.nan, np.inf, ref["img"]["edges"][4]]
            feeds["colour"] = np.array(["purple"] + ["red"] * (n - 1))
            feeds["city"][:3] = ["atlantis", None, np.nan]
            outputs["label"][0] = 9
        requests.append((feeds, outputs))
        stats.record_request(feeds, outputs, latency_ms=1.0 + i)
    body = stats.snapshot_and_reset()

    assert body["requests"]["count"] == len(requests)
    assert body["requests"]["rows"] == sum(len(r[0]["x"]) for r in requests)
    assert sum(body["latency_ms"]["counts"]) == len(requests) and body["latency_ms"]["max"] == 8.0
    assert [(f["name"], f["input"], f["column"], f["kind"]) for f in body["features"]] == \
        [(f["name"], f["input"], f["column"], f["kind"]) for f in reference["features"]]
    assert [(o["name"], o["output"], o["column"], o["kind"]) for o in body["outputs"]] == \
        [(o["name"], o["output"], o.get("column"), o["kind"]) for o in reference["outputs"]]
    assert_counts(body, reference, requests)
    assert all(f["violations"] == 0 for f in body["features"])
    by_name = {f["name"]: f for f in body["features"]}
    assert by_name["x[2]"]["missing"] > 0 and by_name["img"]["missing"] == 1
    assert by_name["colour"]["counts"][UNSEEN] == 1 and OTHER not in by_name["colour"]["counts"]
    assert by_name["city"]["counts"][OTHER] >= 1 and UNSEEN not in by_name["city"]["counts"]
    assert by_name["city"]["missing"] == 2
    assert by_name["scalar"]["column"] == 0  # refstats gives an [n, 1] input column 0
    assert {o["name"]: o for o in body["outputs"]}["label"]["counts"][UNSEEN] == 1

    empty = stats.snapshot_and_reset()
    assert empty["requests"]["count"] == 0
    assert all(sum(f["counts"].values() if isinstance(f["counts"], dict) else f["counts"]) == 0
               for f in empty["features"] + empty["outputs"])


def test_requests_of_other_shapes_and_dtypes_count_as_on_their_own(reference):
    """Shapes and dtypes that differ between the requests of one batch must count as each request
    would alone: other ranks of the same values, text and object categories, float and integer
    labels (stacked), then an extra column (no common 2-D shape: binned one request at a time)."""
    rng = np.random.default_rng(11)
    stats = WindowStats(reference)
    mixed = [make_data(rng, n) for n in (2, 5, 1)]
    feeds, outputs = mixed[1]
    feeds["img"] = feeds["img"].reshape(5, 36)
    feeds["x"] = feeds["x"].reshape(5, 2, 2)
    feeds["colour"] = feeds["colour"].astype(object)
    outputs["label"] = outputs["label"].astype(np.float64)  # class 2.0 is "2.0": unseen
    outputs["probs"] = outputs["probs"].astype(np.float64)
    for request in mixed:
        stats.record_request(*request, 1.0)
    body = stats.snapshot_and_reset()
    assert body["requests"]["rows"] == 8
    assert_counts(body, reference, mixed)
    assert next(o for o in body["outputs"] if o["name"] == "label")["counts"][UNSEEN] == 5

    wider = [make_data(rng, 3), make_data(rng, 4)]
    wider[1][0]["x"] = np.concatenate([wider[1][0]["x"], rng.normal(size=(4, 1))], axis=1)  # not in refstats
    for request in wider:
        stats.record_request(*request, 1.0)
    body = stats.snapshot_and_reset()
    assert_counts(body, reference, wider)
    x0 = next(f for f in body["features"] if f["name"] == "x[0]")
    assert sum(x0["counts"]) == 7 and stats.unbinned_requests == 0


def test_a_request_that_cannot_be_binned_leaves_only_itself_out(reference, monkeypatch):
    monkeypatch.setattr(telemetry, "BATCH_REQUESTS", 3)
    rng = np.random.default_rng(12)
    stats = WindowStats(reference)
    good = [make_data(rng, 2), make_data(rng, 3), make_data(rng, 4)]
    bad_feeds, bad_outputs = make_data(rng, 1)
    bad_feeds["x"] = np.array([["a", "b", "c", "d"]])  # text where the reference is numeric
    stats.record_request(*good[0], 1.0)
    stats.record_request(bad_feeds, bad_outputs, 1.0)
    with pytest.raises(DataError, match="1 request"):  # this call bins the batch: the error surfaces here
        stats.record_request(*good[1], 1.0)
    stats.record_request(*good[2], 1.0)
    body = stats.snapshot_and_reset()
    assert body["requests"]["count"] == 4 and stats.unbinned_requests == 1
    assert_counts(body, reference, good)


def test_pending_requests_are_bounded(reference, monkeypatch):
    monkeypatch.setattr(telemetry, "BATCH_BYTES", 128 * 1024)
    rng = np.random.default_rng(13)
    stats = WindowStats(reference)
    small = make_data(rng, 1)
    for i in range(1, telemetry.BATCH_REQUESTS):
        stats.record_request(*small, 1.0)
        assert len(stats._window.pending) == i
    stats.record_request(*small, 1.0)  # the threshold: all pending requests are binned
    assert stats._window.pending == [] and stats._window.pending_rows == 0
    stats.record_request(*make_data(rng, telemetry.BATCH_ROWS), 1.0)  # enough rows alone: binned at once
    assert stats._window.pending == []
    wide = make_data(rng, 2)
    wide[0]["img"] = rng.random((2, 1, 100, 100))  # 160 kB > BATCH_BYTES: binned at once
    stats.record_request(*wide, 1.0)
    assert stats._window.pending == []
    for _ in range(3):
        stats.record_request(*make_data(rng, 300), 1.0)  # 900 rows pending would exceed BATCH_ROWS
        assert stats._window.pending_rows < telemetry.BATCH_ROWS
    body = stats.snapshot_and_reset()
    assert body["requests"]["count"] == telemetry.BATCH_REQUESTS + 5
    x2 = next(f for f in body["features"] if f["name"] == "x[2]")
    assert sum(x2["counts"]) + x2["missing"] == body["requests"]["rows"]


def test_snapshot_waits_for_a_batch_another_thread_is_binning(reference, monkeypatch):
    """A batch taken from the window before the swap must land in that window's snapshot."""
    monkeypatch.setattr(telemetry, "BATCH_REQUESTS", 4)
    rng = np.random.default_rng(14)
    stats = WindowStats(reference)
    entered, release = threading.Event(), threading.Event()
    count = stats._plan.count

    def held_count(batch):  # the real binning; the recorder's batch is held so the snapshot overlaps it
        if len(batch) == 4:
            entered.set()
            release.wait(30)
        return count(batch)

    monkeypatch.setattr(stats._plan, "count", held_count)
    requests = [make_data(rng, 2) for _ in range(4)]
    for r in requests[:3]:
        stats.record_request(*r, 1.0)
    recorder = threading.Thread(target=stats.record_request, args=(*requests[3], 1.0))
    recorder.start()
    assert entered.wait(30)
    bodies = []
    taker = threading.Thread(target=lambda: bodies.append(stats.snapshot_and_reset()))
    taker.start()
    taker.join(0.5)
    assert taker.is_alive() and not bodies  # held: the batch of its window is still being binned
    release.set()
    recorder.join(30)
    taker.join(30)
    assert len(bodies) == 1 and bodies[0]["requests"]["count"] == 4
    assert_counts(bodies[0], reference, requests)
    assert stats.snapshot_and_reset()["requests"]["count"] == 0


def test_concurrent_records_and_snapshots_sum_to_the_direct_computation(reference, monkeypatch):
    """Several threads record distinct requests while batches are binned mid-window and another thread
    keeps snapshotting: every request is counted once, wholly in one window."""
    monkeypatch.setattr(telemetry, "BATCH_REQUESTS", 7)
    monkeypatch.setattr(telemetry, "BATCH_ROWS", 25)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: batches and swaps interleave in many ways
    try:
        threads_n, per_thread = 4, 150
        data = [[make_data(np.random.default_rng(100 * t + i), 1 + (i % 4)) for i in range(per_thread)]
                for t in range(threads_n)]
        stats = WindowStats(reference)
        snapshots, done = [], threading.Event()

        def worker(t):
            for i, (feeds, outputs) in enumerate(data[t]):
                stats.record_request(feeds, outputs, 0.2 + (i % 7))

        def snapshotter():
            while not done.is_set():
                snapshots.append(stats.snapshot_and_reset())

        taker = threading.Thread(target=snapshotter)
        taker.start()
        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        done.set()
        taker.join()
    finally:
        sys.setswitchinterval(interval)
    snapshots.append(stats.snapshot_and_reset())
    requests = [r for rows in data for r in rows]
    assert len(snapshots) > 2
    assert sum(s["requests"]["count"] for s in snapshots) == len(requests)
    assert sum(s["requests"]["rows"] for s in snapshots) == sum(len(f["x"]) for f, _ in requests)
    for s in snapshots:  # each window holds whole requests: its counts match its own request/row totals
        assert sum(s["latency_ms"]["counts"]) == s["requests"]["count"]
        x2 = next(f for f in s["features"] if f["name"] == "x[2]")
        assert sum(x2["counts"]) + x2["missing"] == s["requests"]["rows"]
    summed = {"requests": {"count": 0}, "features": [], "outputs": []}
    for index, ref in enumerate(reference["features"]):
        parts = [s["features"][index] for s in snapshots]
        counts = (np.sum([p["counts"] for p in parts], axis=0).tolist() if ref["kind"] == "numeric"
                  else dict(sum((Counter(p["counts"]) for p in parts), Counter())))
        summed["features"].append({"counts": counts, "missing": sum(p["missing"] for p in parts)})
    for index, ref in enumerate(reference["outputs"]):
        parts = [s["outputs"][index]["counts"] for s in snapshots]
        summed["outputs"].append({"counts": np.sum(parts, axis=0).tolist() if ref["kind"] == "numeric"
                                  else dict(sum((Counter(p) for p in parts), Counter()))})
    features, outputs = expected_counts(reference, requests)
    for ref, got, (counts, missing) in zip(reference["features"], summed["features"], features):
        if ref["kind"] == "categorical":  # a window's dict has every reference category, zeros included
            counts = {k: v for k, v in counts.items() if v}
        assert got["counts"] == counts and got["missing"] == missing, ref["name"]
    for ref, got, counts in zip(reference["outputs"], summed["outputs"], outputs):
        if ref["kind"] == "labels":
            counts = {k: v for k, v in counts.items() if v}
        assert got["counts"] == counts, ref["name"]


def test_count_categories_other_and_unseen_rule():
    assert count_categories(["a", "b", "zzz", None], {"a": 5, "b": 3}) == {"a": 1, "b": 1, UNSEEN: 1}
    assert count_categories(np.array(["a", "zzz", "yyy"]), {"a": 5, OTHER: 2}) == {"a": 1, OTHER: 2}
    assert count_categories(np.array([True, False, True]), {"true": 2, "false": 1}) == {"true": 2, "false": 1}


def test_argmax_output_index_the_reference_never_saw():
    rng = np.random.default_rng(10)
    probs = rng.random((300, 11))
    probs[:, 10] = -1.0  # class 10 never wins in the reference
    ref = reference_stats({"x": rng.normal(size=(300, 2))}, {"probs": probs})
    assert ref["outputs"][0]["source"] == "argmax" and "10" not in ref["outputs"][0]["categories"]
    stats = WindowStats(ref)
    batch = rng.random((6, 11))
    batch[:2, 10] = 2.0
    batch[2, 3] = np.nan  # NaN never wins, as in refstats
    stats.record_request({"x": rng.normal(size=(6, 2))}, {"probs": batch}, 1.0)
    counts = stats.snapshot_and_reset()["outputs"][0]["counts"]
    clean = np.where(np.isnan(batch[2:]), -np.inf, batch[2:])
    expected, _ = expected_categories(np.argmax(clean, axis=1), ref["outputs"][0]["categories"])
    expected[UNSEEN] = 2
    assert counts == expected


def test_latency_histogram_and_percentiles():
    stats = WindowStats({"features": [], "outputs": []}, seed=0)
    empty = stats.snapshot_and_reset()["latency_ms"]
    assert empty["counts"] == [0] * 17 and empty["max"] is None
    assert [empty[p] for p in ("p50", "p90", "p95", "p99")] == [None] * 4
    rng = np.random.default_rng(4)
    latencies = np.concatenate([rng.lognormal(0.0, 1.5, size=997), [1.0, 10000.0, 20000.0]])
    for value in latencies:
        stats.record_request({}, {}, float(value))
    got = stats.snapshot_and_reset()["latency_ms"]
    assert got["buckets"] == list(LATENCY_BUCKETS_MS)
    expected = np.bincount(np.searchsorted(LATENCY_BUCKETS_MS, latencies, side="left"), minlength=17)
    assert got["counts"] == expected.tolist()
    assert got["counts"][-1] == 1  # only 20000 is above the last bucket; 10000 is <= it
    assert got["sum"] == pytest.approx(latencies.sum()) and got["max"] == 20000.0
    for p in (50, 90, 95, 99):
        assert got[f"p{p}"] == pytest.approx(np.percentile(latencies, p))

    # beyond 10,000 requests: exact counts/sum/max, percentiles from a uniform reservoir
    many = rng.uniform(0.0, 100.0, size=15000)
    for value in many:
        stats.record_request({}, {}, float(value))
    got = stats.snapshot_and_reset()["latency_ms"]
    assert sum(got["counts"]) == 15000 and got["max"] == many.max()
    assert got["sum"] == pytest.approx(many.sum())
    assert got["p50"] == pytest.approx(np.percentile(many, 50), abs=3.0)
    assert got["p99"] == pytest.approx(np.percentile(many, 99), abs=1.0)


def test_rejections_errors_and_violations(reference):
    stats = WindowStats(reference)
    stats.record_rejection("range", ("x[0]", "img", "img"))  # one rejected row: counted once per feature
    stats.record_rejection("range", ("x[0]",))
    stats.record_rejection("shape")
    stats.record_error(latency_ms=3.0)
    stats.record_error()
    with pytest.raises(ValueError, match="rejection reason"):
        stats.record_rejection("bogus")
    body = stats.snapshot_and_reset()
    assert body["requests"] == {"count": 0, "rows": 0, "errors": 2, "rejected": 3,
                                "rejected_reasons": {"range": 2, "shape": 1}}
    violations = {f["name"]: f["violations"] for f in body["features"]}
    assert violations["x[0]"] == 2 and violations["img"] == 1 and violations["x[1]"] == 0
    assert sum(body["latency_ms"]["counts"]) == 1 and body["latency_ms"]["max"] == 3.0


def test_snapshot_is_thread_safe_nothing_lost_or_double_counted(reference):
    rng = np.random.default_rng(5)
    feeds, outputs = make_data(rng, 3)
    stats = WindowStats(reference)
    threads_n, per_thread = 4, 250
    snapshots, done = [], threading.Event()

    def worker():
        for i in range(per_thread):
            stats.record_request(feeds, outputs, 0.2 + (i % 7))
            if i % 10 == 0:
                stats.record_rejection("range", ("x[0]",))

    def snapshotter():
        while not done.is_set():
            snapshots.append(stats.snapshot_and_reset())

    taker = threading.Thread(target=snapshotter)
    taker.start()
    workers = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    taker.join()
    snapshots.append(stats.snapshot_and_reset())
    total = threads_n * per_thread
    assert len(snapshots) > 2
    assert sum(s["requests"]["count"] for s in snapshots) == total
    assert sum(s["requests"]["rows"] for s in snapshots) == 3 * total
    assert sum(s["requests"]["rejected"] for s in snapshots) == threads_n * 25
    assert sum(sum(s["latency_ms"]["counts"]) for s in snapshots) == total
    one = WindowStats(reference)
    one.record_request(feeds, outputs, 1.0)
    single = one.snapshot_and_reset()
    for index, feature in enumerate(single["features"]):
        if feature["kind"] == "numeric":
            summed = np.sum([s["features"][index]["counts"] for s in snapshots], axis=0)
            assert summed.tolist() == [c * total for c in feature["counts"]]
        assert sum(s["features"][index]["violations"] for s in snapshots) == \
            (threads_n * 25 if feature["name"] == "x[0]" else 0)


def test_prediction_values_and_labels_feedback(reference):
    rng = np.random.default_rng(6)
    _, outputs = make_data(rng, 5)
    predicted = prediction_values(reference, outputs)
    assert predicted == [str(v) for v in outputs["label"].tolist()]  # first labels entry: "label"
    argmax_only = {"outputs": [o for o in reference["outputs"] if o["name"] == "probs"]}
    assert prediction_values(argmax_only, outputs) == [str(i) for i in np.argmax(outputs["probs"], 1).tolist()]
    assert prediction_values({"features": [], "outputs": []}, outputs) == []

    stats = WindowStats(reference)
    assert stats.snapshot_and_reset()["accuracy"] is None
    actual = [int(predicted[0]), float(predicted[1]), "wrong", None, predicted[4]]
    stats.record_feedback(predicted, actual)
    assert stats.snapshot_and_reset()["accuracy"] == {"kind": "labels", "labelled": 4, "correct": 3}
    with pytest.raises(DataError):
        stats.record_feedback(predicted, actual[:2])


def test_numeric_feedback_errors():
    rng = np.random.default_rng(7)
    y = rng.normal(size=(300, 1))
    ref = reference_stats({"x": rng.normal(size=(300, 2))}, {"y": y})
    predicted = prediction_values(ref, {"y": y[:6]})
    assert predicted == pytest.approx(y[:6, 0].tolist())
    actual = [p + d for p, d in zip(predicted, [0.5, -1.0, 2.0, 0.0, 0.25, 0.0])]
    actual[5] = float("nan")  # unusable: skipped, never NaN in the sums
    stats = WindowStats(ref)
    stats.record_feedback(predicted, actual)
    accuracy = stats.snapshot_and_reset()["accuracy"]
    assert accuracy["kind"] == "numeric" and accuracy["labelled"] == 5
    assert accuracy["abs_error_sum"] == pytest.approx(3.75)
    assert accuracy["squared_error_sum"] == pytest.approx(0.25 + 1 + 4 + 0 + 0.0625)


def test_feedback_cache_is_a_bounded_lru():
    cache = FeedbackCache(max_requests=3)
    for i in range(3):
        cache.put(f"r{i}", "primary", [str(i)])
    cache.put("r0", "primary", ["0"])  # refreshed: r1 is now the least recent
    cache.put("r3", "candidate", ["3"])
    assert len(cache) == 3
    assert cache.pop("r1") is None
    assert cache.pop("r3") == ("candidate", ["3"])
    assert cache.pop("r3") is None
    assert cache.pop("r0") == ("primary", ["0"])


def validate_window(payload: dict) -> None:
    """The fields and types of docs/telemetry.md for a window payload."""
    assert payload["schema_version"] == 1 and payload["kind"] == "window"
    assert isinstance(payload["device_id"], str) and isinstance(payload["seq"], int) and payload["seq"] >= 1
    assert set(payload["agent"]) >= {"version", "instance"}
    assert set(payload["bundle"]) >= {"id", "name", "version"} and len(payload["bundle"]["id"]) == 64
    assert set(payload["variant"]) >= {"name", "role"}
    assert payload["window"]["start"] <= payload["window"]["end"]
    req = payload["requests"]
    assert all(isinstance(req[k], int) and req[k] >= 0 for k in ("count", "rows", "errors", "rejected"))
    assert set(req["rejected_reasons"]) <= set(REJECT_REASONS)
    assert sum(req["rejected_reasons"].values()) == req["rejected"]
    lat = payload["latency_ms"]
    assert lat["buckets"] == list(LATENCY_BUCKETS_MS) and len(lat["counts"]) == len(lat["buckets"]) + 1
    assert all(lat[k] is None or isinstance(lat[k], float) for k in ("p50", "p90", "p95", "p99", "max"))
    assert isinstance(lat["sum"], (int, float))
    for f in payload["features"]:
        assert set(f) >= {"name", "input", "column", "kind", "counts", "missing", "violations"}
        assert f["kind"] in ("numeric", "categorical")
        counts = f["counts"] if f["kind"] == "numeric" else list(f["counts"].values())
        assert all(isinstance(c, int) and c >= 0 for c in counts)
    for o in payload["outputs"]:
        assert set(o) >= {"name", "output", "column", "kind", "counts"} and o["kind"] in ("labels", "numeric")
    accuracy = payload["accuracy"]
    assert accuracy is None or accuracy["kind"] in ("labels", "numeric")
    assert set(payload["system"]) == {"cpu_percent", "rss_bytes", "temperature_c", "load1"}
    assert set(payload["outbox"]) == {"pending", "dropped_total"}


def strict_loads(data: bytes):
    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")
    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def test_payload_has_every_documented_field_and_no_nan(reference):
    rng = np.random.default_rng(8)
    feeds, outputs = make_data(rng, 4)
    feeds["x"][0, 0] = np.nan  # lands in samples as null
    stats = WindowStats(reference, sample_rate=1.0, seed=1)
    stats.record_request(feeds, outputs, np.float32(2.5))
    stats.record_rejection("nonfinite", ("x[0]",))
    stats.record_feedback(["1"], [np.int64(1)])
    body = stats.snapshot_and_reset()
    payload = build_window_payload(
        device_id="pi-01", seq=np.int64(7), agent={"version": "0.1.0", "instance": "ab12"},
        bundle={"id": "0" * 64, "name": "demo", "version": "1.0"}, variant={"name": "primary", "role": "primary"},
        start=100.0, end=160.0, body=body,
        system={"cpu_percent": float("nan"), "rss_bytes": np.int64(1 << 20), "temperature_c": float("inf")},
        outbox={"pending": 1, "dropped_total": 0})
    data = encode_payload(payload)
    assert b" " not in data.replace(b"pi-01", b"")  # compact
    decoded = strict_loads(data)
    validate_window(decoded)
    assert decoded["system"] == {"cpu_percent": None, "rss_bytes": 1 << 20, "temperature_c": None, "load1": None}
    assert decoded["seq"] == 7 and decoded["accuracy"] == {"kind": "labels", "labelled": 1, "correct": 1}
    assert decoded["samples"]["rate"] == 1.0 and len(decoded["samples"]["rows"]) == 4
    assert decoded["samples"]["rows"][0]["x"][0] is None
    assert decoded["samples"]["rows"][1]["colour"] == str(feeds["colour"][1])
    assert encode_payload({"v": [np.float64("-inf"), np.float32(0.5), np.arange(2)]}) == b'{"v":[null,0.5,[0,1]]}'
    with pytest.raises(ValueError):
        build_window_payload(device_id="d", seq=1, agent={}, bundle={}, variant={}, start=2.0, end=1.0,
                             body=body, system={}, outbox={"pending": 0, "dropped_total": 0})


def test_sampling_is_bounded_and_off_by_default(reference):
    rng = np.random.default_rng(9)
    feeds, outputs = make_data(rng, 50)
    off = WindowStats(reference)
    off.record_request(feeds, outputs, 1.0)
    assert "samples" not in off.snapshot_and_reset()
    stats = WindowStats(reference, sample_rate=1.0, seed=3)
    for _ in range(4):
        stats.record_request(feeds, outputs, 1.0)
    rows = stats.snapshot_and_reset()["samples"]["rows"]
    assert len(rows) == telemetry.MAX_SAMPLES
    fed = {json.dumps(row["scalar"]) for row in ({"scalar": v} for v in feeds["scalar"].tolist())}
    assert all(json.dumps(row["scalar"]) in fed and set(row) == set(feeds) for row in rows)
    some = WindowStats(reference, sample_rate=0.1, seed=4)
    some.record_request(feeds, outputs, 1.0)
    assert len(some.snapshot_and_reset()["samples"]["rows"]) < 20
    with pytest.raises(ValueError):
        WindowStats(reference, sample_rate=1.5)


def test_system_sampler_parses_real_files(tmp_path):
    zones = tmp_path / "sys" / "class" / "thermal"
    for name, text in [("thermal_zone0", "45000\n"), ("thermal_zone1", "61500\n"), ("thermal_zone2", "n/a\n")]:
        (zones / name).mkdir(parents=True)
        (zones / name / "temp").write_text(text)
    (zones / "cooling_device0").mkdir()
    assert hottest_zone_celsius(tmp_path / "sys") == 61.5
    assert hottest_zone_celsius(tmp_path / "nothing") is None

    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    line = "1234 (my) prog) S 1 2 3 4 5 6 7 8 9 10 {utime} {stime} 0 0 20 0 1 0 100 1000 50\n"
    (proc / "stat").write_text(line.format(utime=100, stime=50))
    (proc / "statm").write_text("2000 300 100 1 0 200 0\n")
    assert parse_cpu_seconds(line.format(utime=100, stime=50), 100) == 1.5
    now = [10.0]
    sampler = SystemSampler(proc_root=tmp_path / "proc", sys_root=tmp_path / "sys", clock=lambda: now[0])
    ticks = sampler._ticks
    (proc / "stat").write_text(line.format(utime=100 + ticks, stime=50 + ticks // 2))
    now[0] = 12.0
    sample = sampler.sample()
    assert sample["cpu_percent"] == pytest.approx(100.0 * (ticks + ticks // 2) / ticks / 2.0)
    assert sample["rss_bytes"] == 300 * sampler._page_size
    assert sample["temperature_c"] == 61.5
    (proc / "statm").unlink()
    (proc / "status").write_text("Name:\tprog\nVmRSS:\t  1234 kB\n")
    assert sampler.sample()["rss_bytes"] == 1234 * 1024

    missing = SystemSampler(proc_root=tmp_path / "absent", sys_root=tmp_path / "absent").sample()
    assert missing["cpu_percent"] is None and missing["rss_bytes"] is None and missing["temperature_c"] is None

    real = SystemSampler()
    sum(i * i for i in range(200000))
    sample = real.sample()
    assert sample["rss_bytes"] > 10 * 1024 * 1024 and sample["load1"] >= 0.0
    assert sample["cpu_percent"] is not None and sample["cpu_percent"] >= 0.0
