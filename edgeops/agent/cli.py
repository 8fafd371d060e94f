"""`edgeops agent run BUNDLE [options]` (also `python -m edgeops.agent run ...`).

argparse, not click: the agent runs on small devices and imports only the standard library,
numpy, one runtime and paho-mqtt. Every option can also come from the environment
(EDGEOPS_AGENT_<OPTION>) or a TOML config file (--config); the command line wins, then the
environment, then the file, then the defaults.
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import EdgeOpsError
from .config import OPTIONS, env_name

DESCRIPTION = """Serve a bundle over HTTP on this device and report telemetry over MQTT.

Endpoints: POST /v1/predict, POST /v1/feedback, GET /healthz, GET /metrics (Prometheus).
Each option can be set as EDGEOPS_AGENT_<OPTION> (e.g. EDGEOPS_AGENT_BROKER) or as a key in a
TOML file given with --config (or EDGEOPS_AGENT_CONFIG). Precedence: command line, environment,
config file, defaults.
"""

EPILOG = """exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 2 bad option or config, 3 unreadable file,
4 missing dependency, 9 invalid bundle (tampered, unsigned with --require-signature).
Documentation: docs/agent.md"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeops agent", description="The edgeops on-device agent.")
    parser.add_argument("--version", action="version", version=f"edgeops agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="serve a bundle", description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("bundle", nargs="?", metavar="BUNDLE", help="the .edgepkg bundle to serve")
    run.add_argument("--config", metavar="FILE", help=f"TOML config file (env {env_name('config')})")
    for option in OPTIONS:
        if option.name == "bundle":
            continue
        flag = "--" + option.name.replace("_", "-")
        helptext = f"{option.help} (env {env_name(option.name)}"
        helptext += f"; default {option.default})" if option.default not in (None, "") else ")"
        if option.type == "bool":
            run.add_argument(flag, dest=option.name, action=argparse.BooleanOptionalAction, default=None,
                             help=helptext)
        elif "|" in option.type:
            run.add_argument(flag, dest=option.name, choices=option.type.split("|"), default=None,
                             metavar=option.metavar, help=helptext)
        else:
            run.add_argument(flag, dest=option.name, default=None, metavar=option.metavar, help=helptext)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and map errors to exit codes with `error:`/`hint:` lines (no traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return int(exc.code or 0)
    if args.command != "run":
        parser.print_help(sys.stderr)
        return 2
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        from .config import load_config
        from .service import Agent

        config = load_config(values, config_file=args.config)
        return Agent(config).run()
    except EdgeOpsError as exc:
        sys.stderr.write(f"error: {exc.message}\n".replace("\n", " ").rstrip() + "\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
