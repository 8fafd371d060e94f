"""False alarms and detection power of the fleet drift detector, by simulation.

A fleet of DEVICES devices x FEATURES features (several distribution shapes: normal, skewed,
heavy-tailed, bimodal, uniform, integer-valued with ties, categorical with a rare category).
Per "deployment" a reference sample is drawn and summarised exactly as a bundle does
(edgeops.bundle.refstats); devices then send histograms of fresh data from the SAME
distribution (undrifted) or a shifted one. Histogram counts are drawn from the true bin
probabilities (a multinomial), which is exactly the distribution of the counts of raw data.

Tables:
1. single tests: false-alarm rate at p <= 0.01 of chi-squared homogeneity (used), chi-squared
   goodness of fit (reference taken as exact) and binned KS, vs sample sizes; and the power of
   homogeneity vs binned KS for a mean shift and a spread change;
2. the whole detector on undrifted fleets: fraction of (device, feature) evaluations flagged,
   fraction of evaluations with any flag, fraction of rounds with an alert raised after
   hysteresis, with disjoint horizons and with sliding horizons (3/4 overlap);
3. detection power: one device, 3 features shifted by +0.25 / +0.5 / +1 sd, a stuck sensor,
   and a fleet-wide shift, with the scope the detector gave.

    .venv/bin/python benchmarks/drift_false_alarms.py            # 5-8 minutes on 2 shared cores
    .venv/bin/python benchmarks/drift_false_alarms.py --quick    # smoke run
    .venv/bin/python benchmarks/drift_false_alarms.py --json results/drift.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgeops.bundle.refstats import categorical_summary, numeric_summary  # noqa: E402
from edgeops.fleet import stats  # noqa: E402
from edgeops.fleet.detectors import DetectorConfig, Hysteresis, drift_key, evaluate_fleet  # noqa: E402

UNSEEN = "__unseen__"


class Numeric:
    """A continuous (or integer-valued, ``discrete``) distribution with bin probabilities."""

    def __init__(self, name: str, dist, discrete: bool = False, mixture=None):
        self.name, self.dist, self.discrete, self.mixture = name, dist, discrete, mixture
        self.sd = float(np.sqrt(sum(w * (d.var() + d.mean() ** 2) for w, d in mixture) -
                                sum(w * d.mean() for w, d in mixture) ** 2)) if mixture else float(dist.std())

    def sample(self, rng, n: int) -> np.ndarray:
        if self.mixture:
            which = rng.random(n) < self.mixture[0][0]
            return np.where(which, self.mixture[0][1].rvs(n, random_state=rng),
                            self.mixture[1][1].rvs(n, random_state=rng)).astype(np.float64)
        return self.dist.rvs(n, random_state=rng).astype(np.float64)

    def cdf_below(self, x: np.ndarray) -> np.ndarray:
        """P(X < x): the bins are [edges[i-1], edges[i])."""
        if self.discrete:
            return self.dist.cdf(np.ceil(x) - 1)
        if self.mixture:
            return sum(w * d.cdf(x) for w, d in self.mixture)
        return self.dist.cdf(x)

    def probs(self, entry: dict, shift_sd: float = 0.0, stuck: bool = False) -> np.ndarray:
        edges = np.asarray(entry["edges"], dtype=np.float64)
        if stuck:  # a stuck sensor: every value equals the reference maximum
            p = np.zeros(edges.size + 1)
            p[np.searchsorted(edges, entry["max"], side="right")] = 1.0
            return p
        cdf = self.cdf_below(edges - shift_sd * self.sd)
        return np.diff(np.concatenate(([0.0], cdf, [1.0])))


class Categorical:
    def __init__(self, name: str, probs: dict[str, float]):
        self.name, self.p = name, probs

    def sample(self, rng, n: int) -> np.ndarray:
        return rng.choice(list(self.p), size=n, p=list(self.p.values()))

    def probs(self, entry: dict, shift_sd: float = 0.0, stuck: bool = False) -> dict[str, float]:
        known = entry["categories"]
        out = {k: 0.0 for k in known}
        for k, v in self.p.items():
            out[k if k in known else UNSEEN] = out.get(k if k in known else UNSEEN, 0.0) + v
        return out


def fleet_models(features: int) -> list:
    shapes = [
        lambda i: Numeric(f"normal{i}", st.norm(0, 1)),
        lambda i: Numeric(f"lognormal{i}", st.lognorm(1.0)),
        lambda i: Numeric(f"exponential{i}", st.expon()),
        lambda i: Numeric(f"student_t3_{i}", st.t(3)),
        lambda i: Numeric(f"uniform{i}", st.uniform(0, 10)),
        lambda i: Numeric(f"bimodal{i}", None, mixture=[(0.5, st.norm(-2, 1)), (0.5, st.norm(2, 1))]),
        lambda i: Numeric(f"poisson3_{i}", st.poisson(3), discrete=True),
        lambda i: Categorical(f"colour{i}", {"red": 0.5, "green": 0.3, "blue": 0.1495, "violet": 0.05,
                                            "rare": 0.0005}),
    ]
    return [shapes[i % len(shapes)](i) for i in range(features)]


def make_reference(models, n_ref: int, rng) -> dict:
    features = []
    for m in models:
        values = m.sample(rng, n_ref)
        summary = numeric_summary(values) if isinstance(m, Numeric) else categorical_summary(values)
        kind = "numeric" if isinstance(m, Numeric) else "categorical"
        features.append({"input": m.name, "name": m.name, "column": None, "kind": kind, **summary})
    return {"schema_version": 1, "bins": 10, "features": features, "outputs": []}


def draw(probs, rows: int, rng):
    if isinstance(probs, dict):
        p = np.array(list(probs.values()))
        return dict(zip(probs, rng.multinomial(rows, p / p.sum()).tolist()))
    return rng.multinomial(rows, probs / probs.sum()).tolist()


def add(a, b):
    if a is None:
        return b
    if isinstance(a, dict):
        return {k: a[k] + b[k] for k in a}
    return [x + y for x, y in zip(a, b)]


def current_from_windows(windows: list[dict]) -> dict:
    """Sum each device's last windows into evaluate_fleet's input."""
    out = {}
    for device in windows[0]:
        merged: dict = {}
        for w in windows:
            for name, counts in w[device].items():
                merged[name] = counts + merged.get(name, 0) if name == "__rows__" else add(merged.get(name), counts)
        out[device] = merged
    return out


def simulate(models, reference, rows, rng, rounds: int, horizon: int, config: DetectorConfig,
             shifts: dict | None = None) -> list[dict]:
    """``rounds`` evaluations; each round one new window per device, the horizon is the last
    ``horizon`` windows (1 = disjoint evaluations). shifts: {(device index, feature): (sd, stuck)}.
    """
    entries = {e["name"]: e for e in reference["features"]}
    shifts = shifts or {}
    probs = {d: {m.name: m.probs(entries[m.name], *shifts.get((d, m.name), (0.0, False))) for m in models}
             for d in range(len(rows))}
    windows: list[dict] = []
    hysteresis = Hysteresis(config.enter_after, config.exit_after)
    records = []
    while len(records) < rounds:
        window = {}
        for d, n in enumerate(rows):
            per_window = max(int(n) // horizon, 1)
            window[f"dev{d:03d}"] = {**{m.name: draw(probs[d][m.name], per_window, rng) for m in models},
                                     "__rows__": per_window}
        windows = (windows + [window])[-horizon:]
        if len(windows) < horizon:
            continue
        result = evaluate_fleet(reference, current_from_windows(windows), config)
        tests = [(d, r) for d, rs in result.devices.items() for r in rs] + [("__fleet__", r) for r in result.fleet]
        flags = {(d, r.feature): r.drifted for d, r in tests if d != "__fleet__"}
        fleet_flags = {r.feature: r.drifted for d, r in tests if d == "__fleet__"}
        raised = [k for k, flag in flags.items() if hysteresis.update(drift_key(*k), flag) == "raised"]
        raised += [("__fleet__", f) for f, flag in fleet_flags.items()
                   if hysteresis.update(drift_key("__fleet__", f), flag) == "raised"]
        records.append({"flags": flags, "fleet": fleet_flags, "scope": result.scope, "raised": raised,
                        "keys": [(d, r.feature) for d, r in tests],
                        "p": np.array([np.nan if r.p_value is None else r.p_value for _, r in tests]),
                        "psi": np.array([r.psi for _, r in tests]),
                        "drifted": np.array([r.drifted for _, r in tests], dtype=bool)})
    return records


def layers(records: list[dict], config: DetectorConfig) -> dict[str, dict]:
    """What each safeguard contributes, on one deployment's sequence of evaluations:
    p <= alpha per test, then BH, then BH + the PSI floor (the detector), each + hysteresis."""
    out = {}
    for layer in ("p<=alpha", "BH", "BH+min_psi"):
        hysteresis = Hysteresis(config.enter_after, config.exit_after)
        flagged = tests = any_flag = any_raise = 0
        for rec in records:
            if layer == "p<=alpha":
                flags = rec["p"] <= config.alpha
            elif layer == "BH":
                flags = stats.benjamini_hochberg(rec["p"], config.alpha)
            else:
                flags = rec["drifted"]
            raised = [hysteresis.update(drift_key(*k), bool(f)) == "raised" for k, f in zip(rec["keys"], flags)]
            tests += len(flags)
            flagged += int(np.sum(flags))
            any_flag += bool(np.any(flags))
            any_raise += any(raised)
        out[layer] = {"tests": tests, "flagged": flagged, "evaluations": len(records),
                      "with_flag": any_flag, "with_alert": any_raise}
    return out


def device_rows(devices: int, rng) -> np.ndarray:
    return rng.integers(200, 5001, size=devices)


def calibration_table(rng, reps: int) -> list[dict]:
    """Table 1: the single tests on normal data, 10 decile bins. False-alarm rate at p <= 0.01
    on undrifted data, and detection at p <= 1e-5 (about a BH threshold in a large fleet) of a
    mean shift of 0.25 sd and of a spread change (x1.3)."""
    rows = []
    model = Numeric("normal", st.norm(0, 1))
    for n_ref in (1000, 10000):
        for n_cur in (200, 1000, 5000):
            hits = dict.fromkeys(("chi_squared", "chi_squared_gof", "ks_binned", "chi_squared_shift",
                                  "ks_binned_shift", "chi_squared_spread", "ks_binned_spread"), 0)
            for _ in range(reps):
                entry = numeric_summary(model.sample(rng, n_ref))
                ref, edges = entry["counts"], np.asarray(entry["edges"])
                cur = draw(model.probs(entry), n_cur, rng)
                hits["chi_squared"] += stats.chi_squared(ref, cur).p_value <= 0.01
                hits["chi_squared_gof"] += stats.chi_squared_goodness_of_fit(ref, cur).p_value <= 0.01
                hits["ks_binned"] += stats.ks_binned(ref, cur).p_value <= 0.01
                shifted = draw(model.probs(entry, shift_sd=0.25), n_cur, rng)
                hits["chi_squared_shift"] += stats.chi_squared(ref, shifted).p_value <= 1e-5
                hits["ks_binned_shift"] += stats.ks_binned(ref, shifted).p_value <= 1e-5
                p = np.diff(np.concatenate(([0.0], st.norm(0, 1.3).cdf(edges), [1.0])))
                spread = draw(p, n_cur, rng)
                hits["chi_squared_spread"] += stats.chi_squared(ref, spread).p_value <= 1e-5
                hits["ks_binned_spread"] += stats.ks_binned(ref, spread).p_value <= 1e-5
            rows.append({"n_ref": n_ref, "n_cur": n_cur, **{k: v / reps for k, v in hits.items()}})
    return rows


def false_alarm_table(args, rng) -> list[dict]:
    """Table 2: undrifted fleets, default config, disjoint and sliding horizons, by safeguard."""
    models = fleet_models(args.features)
    config = DetectorConfig()
    out = []
    for horizon in (1, 4):
        totals: dict[str, dict] = {}
        fleet_scope = 0
        for _ in range(args.deployments):
            reference = make_reference(models, args.n_ref, rng)
            records = simulate(models, reference, device_rows(args.devices, rng), rng, args.rounds, horizon, config)
            fleet_scope += sum(any(v == "fleet" for v in rec["scope"].values()) for rec in records)
            for layer, counts in layers(records, config).items():
                into = totals.setdefault(layer, dict.fromkeys(counts, 0))
                for k, v in counts.items():
                    into[k] += v
        for layer, t in totals.items():
            out.append({"horizon": "disjoint" if horizon == 1 else "sliding, 3/4 overlap", "decision": layer,
                        "evaluations": t["evaluations"], "tests": t["tests"],
                        "flagged_fraction": t["flagged"] / t["tests"],
                        "evaluations_with_flag": t["with_flag"] / t["evaluations"],
                        "evaluations_with_alert_raised": t["with_alert"] / t["evaluations"]})
        out[-1]["evaluations_with_fleet_scope"] = fleet_scope / totals["BH+min_psi"]["evaluations"]
    return out


SHIFTED = (0, 3, 1)  # the features shifted: normal, Student t(3), lognormal


def power_table(args, rng) -> list[dict]:
    """Table 3: detection of one device's shift / stuck sensor, and of a fleet-wide shift."""
    models = fleet_models(args.features)
    targets = [models[i].name for i in SHIFTED]
    shapes = {models[i].name: models[i].name.rstrip("0123456789_") for i in SHIFTED}
    cases = [("local", sd, n, 0.1) for sd in (0.25, 0.5, 1.0) for n in (200, 1000, 5000)]
    cases += [("local", 0.25, n, 0.05) for n in (1000, 5000)]
    cases += [("stuck", 0.0, n, 0.1) for n in (200, 5000)]
    cases += [("fleet", 0.25, None, 0.1), ("fleet", 0.5, None, 0.1)]
    out = []
    for kind, sd, n, min_psi in cases:
        config = DetectorConfig(min_psi=min_psi)
        hit = wrong_scope = other = total = raised_by_2 = devices_hit = 0
        per_shape = {f: 0 for f in targets}
        device_share = []
        for _ in range(args.power_deployments):
            reference = make_reference(models, args.n_ref, rng)
            rows = device_rows(args.devices, rng)
            if kind == "fleet":
                shifts = {(d, f): (sd, False) for d in range(args.devices) for f in targets}
            else:
                rows[0] = n
                shifts = {(0, f): (sd, kind == "stuck") for f in targets}
            records = simulate(models, reference, rows, rng, args.power_rounds, 1, config, shifts)
            for i, rec in enumerate(records):
                if kind == "fleet":
                    for f in targets:
                        flagged = [d for (d, g), v in rec["flags"].items() if g == f and v]
                        device_share.append(len(flagged) / args.devices)
                        hit += rec["fleet"].get(f, False)
                        per_shape[f] += rec["fleet"].get(f, False)
                        wrong_scope += sum(rec["scope"].get((d, f)) != "fleet" for d in flagged)
                        devices_hit += len(flagged)
                        total += 1
                    continue
                for f in targets:
                    flag = rec["flags"].get(("dev000", f), False)
                    hit += flag
                    per_shape[f] += flag
                    wrong_scope += flag and rec["scope"].get(("dev000", f)) != "device"
                    total += 1
                other += sum(v for (d, g), v in rec["flags"].items() if not (d == "dev000" and g in targets))
                if i == 1:
                    raised_by_2 += sum(1 for d, f in rec["raised"] if d == "dev000" and f in targets)
        row = {"case": kind, "shift_sd": sd, "rows": n if n else "200..5000", "min_psi": min_psi,
               "detected": hit / total,
               **{f"detected_{shapes[f]}": v / (total / len(targets)) for f, v in per_shape.items()},
               "wrong_scope": wrong_scope / max(devices_hit if kind == "fleet" else hit, 1)}
        if kind == "fleet":
            row["devices_flagged"] = float(np.mean(device_share))
        else:
            row["other_flags_per_eval"] = other / (total / len(targets))
            row["alert_raised_at_round_2"] = raised_by_2 / (len(targets) * args.power_deployments)
        out.append(row)
        print(f"  power {kind} {sd} sd rows={row['rows']} min_psi={min_psi}: detected {row['detected']:.2f}",
              file=sys.stderr)
    return out


def render(table: list[dict]) -> str:
    keys = list(table[0])
    for row in table:
        keys += [k for k in row if k not in keys]
    fmt = lambda v: (f"{v:.1e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}") if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in table]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--n-ref", type=int, default=5000, help="reference rows per deployment")
    parser.add_argument("--deployments", type=int, default=5, help="independent references (undrifted runs)")
    parser.add_argument("--rounds", type=int, default=20, help="evaluations per deployment")
    parser.add_argument("--power-deployments", type=int, default=4)
    parser.add_argument("--power-rounds", type=int, default=3)
    parser.add_argument("--calibration-reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--quick", action="store_true", help="small fleet, few rounds")
    parser.add_argument("--json", type=Path, help="also write the tables as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.deployments, args.rounds = 40, 1, 4
        args.power_deployments, args.power_rounds, args.calibration_reps = 1, 2, 200
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    result["calibration"] = calibration_table(rng, args.calibration_reps)
    print("1. single tests on normal data: false-alarm rate at p <= 0.01 (undrifted); detection at p <= 1e-5"
          " of +0.25 sd (_shift) and sd x1.3 (_spread)\n")
    print(render(result["calibration"]) + "\n")
    result["false_alarms"] = false_alarm_table(args, rng)
    print(f"2. undrifted fleets: {args.devices} devices x {args.features} features, rows 200..5000, "
          f"{args.deployments} references x {args.rounds} evaluations, default DetectorConfig\n")
    print(render(result["false_alarms"]) + "\n")
    result["power"] = power_table(args, rng)
    print(f"3. detection: {len(SHIFTED)} features of one device (dev000) shifted, or of every device (fleet)\n")
    print(render(result["power"]) + "\n")
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"({result['seconds']} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
