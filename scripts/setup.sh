#!/usr/bin/env bash
# Create .venv and install edgeops with every extra and the test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# onnx2tf hard-pins old TensorFlow/onnx/numpy: it must be installed without its dependencies
# (docs/onnx-to-tflite.md), next to tensorflow-cpu from the [keras] extra.
.venv/bin/python -m pip install -q --no-deps -r requirements-onnx2tf.txt
