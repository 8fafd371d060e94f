"""`edgeops agent`: listed in `edgeops --help`; the work is done by edgeops.agent.cli (argparse).

The console script hands `edgeops agent ...` straight to edgeops.agent.cli without click
(edgeops/cli/entry.py). This command only serves `edgeops --help` and callers of cli.main().
"""
from __future__ import annotations

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []},
               add_help_option=False,
               short_help="Serve a bundle on the device over HTTP and report telemetry over MQTT.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args) -> None:
    """Serve a bundle on the device (see `edgeops agent run --help`)."""
    from ..agent.cli import main as agent_main

    code = agent_main(list(args))
    if code:
        sys.exit(code)
