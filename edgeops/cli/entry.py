"""The `edgeops` console script.

`edgeops agent ...` runs on the device, where only `pip install 'edgeops[agent]'` is installed:
numpy, one runtime and paho-mqtt. It is dispatched here, before click (or anything else the
build-side commands need) is imported, so the agent starts fast and needs nothing more.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["agent"]:
        from ..agent.cli import main as agent_main

        sys.exit(agent_main(args[1:]))
    try:
        import click  # noqa: F401  (the build-side commands need it)
    except ImportError:
        sys.stderr.write("error: this edgeops install has only the on-device agent\n"
                         "hint: run `edgeops agent run BUNDLE`, or install the tools with: "
                         "pip install 'edgeops[all]'\n")
        sys.exit(4)
    from .main import main as cli_main

    cli_main(args)
