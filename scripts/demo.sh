#!/usr/bin/env bash
# Set up, then run the whole toolchain on an example it creates (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh mosquitto   # the fleet part runs a private broker
bash scripts/setup.sh
.venv/bin/python examples/quickstart.py --out "${EDGEOPS_EXAMPLE_DIR:-example}" "$@"
