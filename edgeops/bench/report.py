"""Render a benchmark report (the dict from run.report_dict): terminal table, Markdown, PNG plot.

Rendering only: no measurement happens here.
"""
from __future__ import annotations

from pathlib import Path

COLUMNS = ["model", "fmt", "prec", "size", "score % (Δ)", "p50", "p95", "p99",
           "samples/s", "RSS MB", "device p50 [band]", "verdict"]


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def _acc(acc: dict | None) -> str:
    if not acc:
        return "-"
    short = {"accuracy": "acc", "agreement": "agree", "r2": "R²"}.get(acc["metric"], acc["metric"])
    if not acc["drop_points"]:
        return f"{short} {acc['after']:.2f}"
    return f"{short} {acc['after']:.2f} ({-acc['drop_points']:+.2f})"


def rows(report: dict) -> list[list[str]]:
    out = []
    for r in report["results"]:
        lat, est = r["latency_ms"], r.get("estimate")
        est_text = "-"
        if est:
            e = est["latency_ms"]
            est_text = f"{e['p50']:.3g} [{e['low']:.3g}-{e['high']:.3g}]"
        verdict = r["verdict"]
        v = "-" if not verdict["checks"] else ("pass" if verdict["pass"] else "FAIL")
        out.append([r["label"], r["format"], r["precision"], _size(r["size_bytes"]), _acc(r.get("accuracy")),
                    f"{lat['p50']:.3g}", f"{lat['p95']:.3g}", f"{lat['p99']:.3g}", f"{r['throughput_per_s']:.4g}",
                    "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.1f}", est_text, v])
    return out


def terminal_table(report: dict):
    from rich.text import Text

    from ..cli.output import table

    title = f"Benchmark (latency in ms) on {report['environment'].get('cpu_model') or 'this machine'}"
    if report["profile"]:
        title += f" for {report['profile']}" + (" (on the device)" if report["on_device"] else "")
    body = rows(report)
    for row in body:
        row[-1] = Text(row[-1], style="green" if row[-1] == "pass" else ("bold red" if row[-1] == "FAIL" else ""))
    return table(title, COLUMNS, body)


def messages(report: dict) -> list[str]:
    """Budget failures, estimate warnings and notes, one line each, prefixed with the model."""
    out = []
    for r in report["results"]:
        for f in r["verdict"]["failures"]:
            out.append(f"{r['label']}: over budget: {f}")
        for w in (r.get("estimate") or {}).get("warnings", []):
            out.append(f"{r['label']}: warning: {w}")
        for n in r.get("notes", []):
            out.append(f"{r['label']}: note: {n}")
    return out


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# edgeops benchmark{' for ' + report['profile'] if report['profile'] else ''}", ""]
    if report.get("budgets"):
        b = report["budgets"]
        lines += [f"Budgets: latency {b['latency_ms']:g} ms, RAM {b['ram_mb']:g} MB, "
                  f"model size {b['model_size_mb']:g} MB. Overall: **{'pass' if report['pass'] else 'FAIL'}**.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(report):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    msgs = messages(report)
    if msgs:
        lines += [""] + [f"- {m}" for m in msgs]
    lines += ["", "## Environment", ""]
    for key in ("cpu_model", "board", "usable_cores", "cpu_governor", "cpu_max_freq_mhz", "throttled", "os", "python"):
        if key in env:
            lines.append(f"- {key}: {env[key]}")
    versions = env.get("packages") or {}
    if versions:
        lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    s = report["settings"]
    lines += ["", f"Settings: >= {s['runs']} runs and >= {s['duration_s']} s per model after {s['warmup']} "
              f"warm-up runs; latency percentiles use linear interpolation. Schema version "
              f"{report['schema_version']} (docs/benchmark.md).", ""]
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> None:
    """Latency distribution per model (box plot with the individual runs), one PNG."""
    from ..errors import require

    require("matplotlib", "matplotlib", "plot", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if r.get("latency_values_ms")]
    if not results:
        from ..errors import UsageError

        raise UsageError("the report holds no per-run latencies to plot", "run the benchmark with --plot")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(results) + 2), 4.5), dpi=110)
    data = [r["latency_values_ms"] for r in results]
    ax.boxplot(data, showfliers=False, whis=(1, 99))
    import numpy as np

    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        sample = np.asarray(values)
        if len(sample) > 2000:
            sample = rng.choice(sample, 2000, replace=False)
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(sample)), sample, s=3, alpha=0.25)
        est = results[i - 1].get("estimate")
        if est:
            e = est["latency_ms"]
            ax.errorbar(i + 0.3, e["p50"], yerr=[[e["p50"] - e["low"]], [e["high"] - e["p50"]]], fmt="D",
                        color="black", capsize=3, label="device estimate p50 [low-high]" if i == 1 else None)
    if report.get("budgets"):
        ax.axhline(report["budgets"]["latency_ms"], color="red", linestyle="--", linewidth=1,
                   label=f"latency budget {report['budgets']['latency_ms']:g} ms")
    ax.set_xticks(range(1, len(results) + 1), [f"{r['label']}\n{r['precision']}" for r in results], fontsize=8)
    ax.set_ylabel("latency per run (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Latency distribution (box: p25-p75, whiskers p1-p99) on "
                 f"{report['environment'].get('cpu_model') or 'this machine'}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
