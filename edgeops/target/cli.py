"""The command-line side of the target check, shared by `edgeops verify --target` and
`edgeops package --verify-target` (edgeops/cli/bundle.py)."""
from __future__ import annotations

import click

from .errors import TargetCheckError, TargetToolError


def target_options(fn):
    """Options of the emulated target check (the profile option itself differs per command)."""
    options = [
        click.option("--skip-target-check", is_flag=True,
                     help="When this machine cannot run the target check (not Linux, no qemu or debootstrap), "
                          "skip it with a warning instead of failing with exit 4. A bundle that fails on the "
                          "target still fails."),
        click.option("--target-cache", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
                     help="Cache of root filesystems and wheels [default: $EDGEOPS_TARGET_CACHE, else "
                          "~/.cache/edgeops/target]."),
        click.option("--target-mirror", metavar="URL",
                     help="Debian mirror for the root filesystem [default: the one apt uses here, else "
                          "http://deb.debian.org/debian]."),
        click.option("--target-timeout", type=click.FloatRange(min=1), default=900.0, show_default=True,
                     metavar="SECONDS", help="Longest the emulated run may take."),
        click.option("--target-atol", type=click.FloatRange(min=0), metavar="X",
                     help="Absolute tolerance of target vs host outputs [default: the bundle's parity "
                          "tolerance, else 1e-5]."),
        click.option("--target-rtol", type=click.FloatRange(min=0), metavar="X",
                     help="Relative tolerance of target vs host outputs [default: the bundle's, else 1e-4]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_targets(bundle: str, profiles, *, skip_target_check: bool, target_cache, target_mirror, target_timeout,
                target_atol, target_rtol, quiet: bool) -> tuple[list[dict], TargetCheckError | None]:
    """Run every profile's check; print each report unless quiet. Returns (report dicts, first failure).

    All profiles run even when one fails, so one CI run shows every device's problems.
    """
    from . import check

    results, failure = [], None
    for profile in profiles:
        def log(message: str) -> None:
            if not quiet:
                click.echo(message, err=True)

        try:
            report = check.verify_target(bundle, profile, cache_dir=target_cache, mirror=target_mirror,
                                         timeout=target_timeout, atol=target_atol, rtol=target_rtol, log=log)
        except TargetToolError as exc:
            if not (skip_target_check and exc.skippable):
                raise
            click.echo(f"warning: target check for {profile} skipped (--skip-target-check): {exc.message}",
                       err=True)
            results.append({"profile": str(profile), "skipped": True, "reason": exc.message, "hint": exc.hint})
            continue
        except TargetCheckError as exc:  # the profile cannot run the bundle at all (e.g. no wheel)
            results.append({"profile": str(profile), "passed": False, "error": exc.message, "hint": exc.hint})
            failure = failure or exc
            if not quiet:
                click.echo(f"target {profile}: FAIL\n  {exc.message}")
            continue
        results.append(report.to_dict())
        if not quiet:
            click.echo("\n".join(report.lines()))
        try:
            check.raise_for_failure(report)
        except TargetCheckError as exc:
            failure = failure or exc
    return results, failure
