#!/usr/bin/env bash
# Set up, then run the whole test suite. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/python -m pytest tests "$@"
