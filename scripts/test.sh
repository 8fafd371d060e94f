#!/usr/bin/env bash
# Set up (Debian packages, .venv), then run the whole test suite. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
# The dashboard test skips without a browser on a developer's machine; here it must run.
export EDGEOPS_REQUIRE_BROWSER=1
# Likewise the emulated-aarch64 target check (qemu-user-static, debootstrap).
export EDGEOPS_REQUIRE_TARGET=1
.venv/bin/python -m pytest tests "$@"
