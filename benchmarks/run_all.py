"""Run the whole performance suite in one go and print each script's ratios.

    python benchmarks/run_all.py [--out DIR] [--quick]

Every script compares edgeops with a reference in the same run (see benchmarks/README.md);
each writes its JSON into --out (default: a new temporary directory) and this script prints
where. --quick shortens each script (fewer rounds) for a smoke run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUITE = [
    ("harness_overhead", ["--rounds", "15"], ["--rounds", "3", "--duration", "0.2"]),
    ("quantize_speed", [], ["--min-runs", "50", "--min-seconds", "0.5", "--threads", "1"]),
    ("startup_time", ["--repeat", "10"], ["--repeat", "3"]),
    ("estimate_error", [], []),
    ("agent_http", ["--rounds", "3"], ["--rounds", "1", "--duration", "2", "--requests", "500"]),
    ("monitor_ingest", [], ["--messages", "5000"]),
    ("drift_false_alarms", [], ["--quick"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgeops-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, full, quick in SUITE:
        print(f"\n=== {name}", flush=True)
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full), "--json", str(out / f"{name}.json")]
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
    print(f"\nresults: {out}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
