"""The `edgeops` command. One place maps EdgeOpsError to exit codes (docs/exit-codes.md)."""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import EdgeOpsError

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  internal error (a bug: please report it)
  2  usage error: bad or conflicting options, unknown device profile
  3  unreadable input: missing, unknown, corrupt or truncated file; data that does not fit the model
  4  a missing optional dependency (the message names the pip extra)
  5  unsupported model, estimator or operator
  6  parity check failed: the converted model disagrees with the original
  7  accuracy gate failed: quantization lost too much accuracy
  8  over budget: a benchmarked model exceeds the device's latency, RAM or size budget
  9  invalid bundle: tampered, incomplete, unsafe entry, bad or missing signature
  10 target check failed: no runtime wheel for the device, or the bundle fails on the emulated device
"""


# Commands load on first use, so `edgeops --version` and each command import only what they need.
COMMANDS = {
    "convert": "edgeops.cli.convert:command",
    "inspect": "edgeops.cli.convert:inspect_command",
    "quantize": "edgeops.cli.quantize:command",
    "benchmark": "edgeops.cli.benchmark:command",
    "devices": "edgeops.cli.devices:group",
    "package": "edgeops.cli.bundle:package_command",
    "keygen": "edgeops.cli.bundle:keygen_command",
    "verify": "edgeops.cli.bundle:verify_command",
    "agent": "edgeops.cli.agent:command",
    "monitor": "edgeops.cli.fleet:monitor_command",
    "fleet": "edgeops.cli.fleet:fleet_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        import importlib

        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup,
             help="Take a trained model to edge devices: convert, quantize and benchmark it against "
                  "device profiles, package it as a signed bundle, serve it on the device (agent) and "
                  "watch the fleet for drift (monitor, fleet).\n\n" + EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeops")
def cli() -> None:
    pass


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="edgeops", standalone_mode=False)
    except EdgeOpsError as exc:
        _print_error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # click's own usage errors: exit 2
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


def _print_error(exc: EdgeOpsError) -> None:
    line = exc.message.replace("\n", " ")
    click.echo(click.style("error: ", fg="red", bold=True) + line, err=True)
    if exc.hint:
        click.echo(click.style("hint: ", fg="yellow") + exc.hint, err=True)


if __name__ == "__main__":
    main()
