"""The dashboard's JSON API: plain functions from (store, validated query) to JSON-ready dicts.

No HTTP here (server.py does that), so each view can be tested on a real store alone. Every
function reads through the Store contract only: devices(), windows(), reference(),
drift_history(), latest_drift() (through status.latest_drift, which reads the evaluator's
state for how far back it reaches), alerts(), quarantine_counts().

Drift rows are sparse (the monitor's --drift-history-interval): a (device, feature) that stays
the same is stored once every few evaluations, so a drift history has fewer points while stable.
"""
from __future__ import annotations

import math
import time

from edgeops.fleet.detectors import reference_entries
from edgeops.fleet.status import latest_drift
from edgeops.fleet.web.query import ApiError

FLEET = "__fleet__"              # the device id of the fleet aggregate in drift rows
TOP_FEATURES = 3
TIMELINE_POINTS = 240          # per variant, in the device view's latency chart
# PSI conventions drawn as guide lines: < 0.1 stable, 0.1 .. 0.25 moderate, > 0.25 major shift.
PSI_GUIDES = (0.1, 0.25)


# ---------------------------------------------------------------- fleet overview


def device_state(device: dict, now: float, stale_after: float) -> str:
    """online / stale / offline, by the rule of `edgeops fleet status` (docs/fleet-monitor.md).

    "stale" when the last message is older than ``stale_after``, whatever the retained status
    says (an agent whose connection died uncleanly may still be "online" there); else "offline"
    when the retained status says so; else "online".
    """
    last_seen = device.get("last_seen")
    if last_seen is None or now - float(last_seen) > stale_after:
        return "stale"
    return "offline" if device.get("online") is False else "online"


def _drift_by_device(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["device_id"], []).append(row)
    return out


def _score(row: dict) -> dict:
    return {key: row.get(key) for key in ("feature", "kind", "test", "statistic", "p_value", "psi", "n",
                                           "drifted", "scope", "bundle_id")} | {"evaluated_at": row.get("evaluated_at")}


def fleet(store, now: float, stale_after: float, mqtt_status: dict | None = None) -> dict:
    latest = _drift_by_device(latest_drift(store))
    devices = []
    for device in store.devices():
        rows = latest.get(device["device_id"], [])
        ranked = sorted(rows, key=lambda r: (not r.get("drifted"), -_num(r.get("psi"))))
        devices.append({
            "device_id": device["device_id"],
            "state": device_state(device, now, stale_after),
            "online": device.get("online"),
            "last_seen": device.get("last_seen"),
            "last_seq": device.get("last_seq"),
            "bundle": device.get("bundle"),
            "windows": device.get("windows"),
            "p95_latency_ms": device.get("p95_latency_ms"),
            "drifted": any(bool(r.get("drifted")) for r in rows),
            "drifted_features": sorted(r["feature"] for r in rows if r.get("drifted")),
            "evaluated": bool(rows),
            "top_features": [_score(r) for r in ranked[:TOP_FEATURES]],
        })
    fleet_rows = latest.get(FLEET, [])
    counts = {state: sum(1 for d in devices if d["state"] == state) for state in ("online", "stale", "offline")}
    return {
        "generated_at": now,
        "stale_after_s": stale_after,
        "summary": {"devices": len(devices), **counts,
                    "drifting": sum(1 for d in devices if d["drifted"]),
                    "quarantined": sum(store.quarantine_counts().values())},
        "devices": devices,
        "fleet_drift": [_score(r) for r in sorted(fleet_rows, key=lambda r: -_num(r.get("psi")))],
        "monitor": mqtt_status,
    }


# ---------------------------------------------------------------- one device


def _find_device(store, device_id: str) -> dict:
    for device in store.devices():
        if device["device_id"] == device_id:
            return device
    raise ApiError(404, f"unknown device {device_id!r}")


def _reference_entries(refstats: dict) -> list[dict]:
    """Features then outputs, each tagged with its role and named as the drift rows name them.

    Outputs are monitored like features (prediction drift); one named like a feature is
    "output:NAME" (detectors.reference_entries), so its scores and its distribution are found.
    """
    outputs = {id(e) for e in refstats.get("outputs", [])}
    return [dict(entry, key=key, role="output" if id(entry) in outputs else "feature")
            for key, entry in reference_entries(refstats).items()]


def device(store, device_id: str, now: float, stale_after: float, hours: float) -> dict:
    info = _find_device(store, device_id)
    bundle = info.get("bundle") or {}
    bundle_id = bundle.get("id")
    reference = store.reference(bundle_id) if bundle_id else None
    # The latest score per feature: its newest row in the chosen period, or the newest rows the
    # monitor stored (fleet status' view), also when older than the period.
    scores: dict[str, dict] = {}
    for row in store.drift_history(device_id=device_id, since=now - hours * 3600):
        scores[row["feature"]] = _score(row)
    for row in latest_drift(store, device_id=device_id):
        scores[row["feature"]] = _score(row)
    features = []
    if reference is not None:
        for entry in _reference_entries(reference["refstats"]):
            features.append({"feature": entry["key"], "kind": entry["kind"], "role": entry["role"],
                             "score": scores.pop(entry["key"], None)})
    # Then the operational signals (__latency__, __error_rate__, ...: no distribution, no PSI),
    # and scores of features this reference does not list (an older bundle).
    features.extend({"feature": name, "kind": score.get("kind"),
                     "role": "signal" if score.get("kind") == "signal" else None, "score": score}
                    for name, score in sorted(scores.items(), key=lambda kv: (kv[1].get("kind") != "signal", kv[0])))
    timeline = _timeline(store.windows(device_id=device_id, since=now - hours * 3600), now - hours * 3600, now)
    return {
        "device_id": device_id,
        "state": device_state(info, now, stale_after),
        "online": info.get("online"),
        "last_seen": info.get("last_seen"),
        "last_seq": info.get("last_seq"),
        "windows": info.get("windows"),
        "p95_latency_ms": info.get("p95_latency_ms"),
        "bundle": info.get("bundle"),
        "has_reference": reference is not None,
        "features": features,
        "timeline": timeline,
        "hours": hours,
    }


def _timeline(windows: list[dict], start: float, end: float) -> list[dict]:
    """Requests and p95 latency per variant over time, at most TIMELINE_POINTS points each.

    A week of one-minute windows is 10,080 points per variant: more than a chart can show, and
    a megabyte per refresh. Longer spans are merged into equal time buckets: counts add up, p95
    becomes the request-weighted mean of the windows' p95 (the store's own approximation).
    """
    width = max((end - start) / TIMELINE_POINTS, 1e-9)
    buckets: dict[tuple[str, int], dict] = {}
    for w in windows:
        requests = w.get("requests") or {}
        variant = (w.get("variant") or {}).get("name") or "primary"
        t = float(w["window"]["end"])
        key = (variant, int((t - start) // width)) if len(windows) > TIMELINE_POINTS else (variant, len(buckets))
        b = buckets.setdefault(key, {"t": t, "variant": variant, "windows": 0, "requests": 0, "rows": 0,
                                     "errors": 0, "rejected": 0, "_p95": 0.0, "_weight": 0})
        b["t"] = max(b["t"], t)
        b["windows"] += 1
        for field, source in (("requests", "count"), ("rows", "rows"), ("errors", "errors"), ("rejected", "rejected")):
            b[field] += int(requests.get(source) or 0)
        p95 = (w.get("latency_ms") or {}).get("p95")
        count = int(requests.get("count") or 0)
        if isinstance(p95, (int, float)) and count > 0:
            b["_p95"] += float(p95) * count
            b["_weight"] += count
    out = []
    for b in buckets.values():
        weight, total = b.pop("_weight"), b.pop("_p95")
        out.append(dict(b, p95_latency_ms=total / weight if weight else None))
    return sorted(out, key=lambda b: (b["variant"], b["t"]))


def drift(store, device_id: str, feature: str, now: float, hours: float) -> dict:
    rows = store.drift_history(device_id=device_id, feature=feature, since=now - hours * 3600)
    points = [{"t": r["evaluated_at"], "psi": r.get("psi"), "p_value": r.get("p_value"),
               "statistic": r.get("statistic"), "test": r.get("test"), "n": r.get("n"),
               "drifted": bool(r.get("drifted")), "scope": r.get("scope")} for r in rows]
    return {"device": device_id, "feature": feature, "hours": hours, "psi_guides": list(PSI_GUIDES),
            "points": points}


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _current_entry(window: dict, role: str, name: str) -> dict | None:
    for entry in window.get("outputs" if role == "output" else "features") or ():
        if entry.get("name") == name:
            return entry
    return None


def _bin_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all"]
    fmt = lambda x: f"{x:.4g}"  # noqa: E731 - a one-line local formatter reads best here
    labels = [f"< {fmt(edges[0])}"]
    labels += [f"{fmt(a)} – {fmt(b)}" for a, b in zip(edges, edges[1:])]
    labels.append(f"≥ {fmt(edges[-1])}")
    return labels


def _frequencies(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def distribution(store, device_id: str, feature: str, bundle_id: str | None, now: float, hours: float) -> dict:
    """Reference vs current histogram of one feature, on the reference's own bins."""
    if bundle_id is None and device_id != FLEET:
        bundle_id = (_find_device(store, device_id).get("bundle") or {}).get("id")
    if bundle_id is None:
        raise ApiError(404, f"device {device_id!r} has reported no bundle yet; give bundle=")
    reference = store.reference(bundle_id)
    if reference is None:
        raise ApiError(404, f"no reference statistics stored for bundle {bundle_id[:12]}…")
    entry = next((e for e in _reference_entries(reference["refstats"]) if e["key"] == feature), None)
    if entry is None:
        raise ApiError(404, f"bundle {bundle_id[:12]}… has no feature or output {feature!r}")
    windows = store.windows(device_id=None if device_id == FLEET else device_id, bundle_id=bundle_id,
                            since=now - hours * 3600)
    # A shadow variant runs on the same requests as the primary: its inputs would count twice
    # (the monitor skips them too).
    windows = [w for w in windows if (w.get("variant") or {}).get("role") != "shadow"]
    numeric = entry["kind"] == "numeric"
    used = 0
    skipped = 0
    if numeric:
        labels = _bin_labels(entry.get("edges", []))
        ref_counts = [int(c) for c in entry.get("counts", [])]
        cur_counts = [0] * len(ref_counts)
        for window in windows:
            cur = _current_entry(window, entry["role"], entry["name"])
            counts = cur.get("counts") if cur else None
            # A window binned on other edges (a different reference) cannot be added bin by bin.
            if not isinstance(counts, list) or len(counts) != len(cur_counts):
                skipped += cur is not None
                continue
            cur_counts = [a + int(b) for a, b in zip(cur_counts, counts)]
            used += 1
    else:
        ref_map = {str(k): int(v) for k, v in (entry.get("categories") or {}).items()}
        cur_map: dict[str, int] = {}
        for window in windows:
            cur = _current_entry(window, entry["role"], entry["name"])
            counts = cur.get("counts") if cur else None
            if not isinstance(counts, dict):
                skipped += cur is not None
                continue
            for key, value in counts.items():
                cur_map[str(key)] = cur_map.get(str(key), 0) + int(value)
            used += 1
        # Reference order (most frequent first), then categories only the device has seen.
        labels = list(ref_map) + sorted(k for k in cur_map if k not in ref_map)
        ref_counts = [ref_map.get(k, 0) for k in labels]
        cur_counts = [cur_map.get(k, 0) for k in labels]
    return {
        "device": device_id, "feature": feature, "bundle": bundle_id, "kind": entry["kind"],
        "role": entry["role"], "hours": hours,
        "edges": entry.get("edges") if numeric else None,
        "labels": labels,
        "reference": {"counts": ref_counts, "frequencies": _frequencies(ref_counts), "rows": sum(ref_counts),
                      "mean": entry.get("mean"), "std": entry.get("std")},
        "current": {"counts": cur_counts, "frequencies": _frequencies(cur_counts), "rows": sum(cur_counts),
                    "windows": used, "windows_skipped": skipped},
    }


def alerts(store, now: float, hours: float) -> dict:
    return {"hours": hours, "alerts": store.alerts(since=now - hours * 3600)}


def now() -> float:
    return time.time()
