"""Benchmark measurements: latency, throughput, peak memory and the machine they ran on.

Measurement modules (import them directly; this package imports nothing heavy):
  stats.py        pure latency statistics (LatencyStats, throughput)
  harness.py      latency and throughput through the Runtime protocol (ONNX and TFLite alike)
  memory.py       peak RSS of one model, measured in an isolated child process
  environment.py  CPU, governor, throttling, RAM, OS and package versions of this machine

Every measurement is a frozen dataclass with ``to_dict()``: the report and the CLI render it.
"""
