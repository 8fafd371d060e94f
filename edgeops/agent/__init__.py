"""The on-device agent: serve a bundle over HTTP, report telemetry over MQTT (docs/agent.md).

Light by design: importing it loads the standard library, numpy, one runtime (onnxruntime or
LiteRT, when a bundle is loaded) and paho-mqtt, never torch, tensorflow, scikit-learn or click.
The names below load on first use, so `import edgeops.agent` itself is cheap.
"""
from __future__ import annotations

__all__ = ["Agent", "AgentConfig", "load_config"]


def __getattr__(name: str):
    if name == "Agent":
        from .service import Agent

        return Agent
    if name in ("AgentConfig", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'edgeops.agent' has no attribute {name!r}")
