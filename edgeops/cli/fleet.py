"""`edgeops monitor` (subscribe, store, detect drift, alert) and `edgeops fleet status`."""
from __future__ import annotations

import math
import signal
import threading
import time

import click

from ..errors import UsageError
from . import output

DEFAULT_STALE_AFTER = 180.0


def _default_db() -> str:
    from ..fleet.broker import default_state_dir

    return f"sqlite:///{default_state_dir() / 'fleet.db'}"


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{option} {value!r} is not HOST:PORT", f"for example {option} 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def _days_to_seconds(ctx, param, days: float) -> float | None:
    """A retention in days (click checked >= 0) as seconds; 0 (keep forever) as None."""
    if not math.isfinite(days):
        raise click.BadParameter(f"{days} is not a number of days (0 keeps the rows forever)")
    return days * 86400.0 if days > 0 else None


def _finite_seconds(ctx, param, seconds: float) -> float:
    if not math.isfinite(seconds):
        raise click.BadParameter(f"{seconds} is not a number of seconds")
    return seconds


CONNECT_WAIT_S = 15.0  # how long to wait for the broker before saying it is not there (it keeps retrying)


def _log(message: str) -> None:
    click.echo(time.strftime("%H:%M:%S ") + message, err=True)


@click.command("monitor")
@click.option("--broker", metavar="URL", help="MQTT broker the agents publish to (mqtt://HOST[:PORT], mqtts://...). "
              "Default: start a private Mosquitto on loopback.")
@click.option("--db", metavar="URL", help="Where to store telemetry: sqlite:///PATH, a file path, or "
              "postgresql://... Default: $XDG_STATE_HOME/edgeops/fleet.db.")
@click.option("--bundle", "bundles", multiple=True, type=click.Path(dir_okay=False, path_type=str),
              metavar="FILE", help="A .edgepkg the devices run (its reference statistics); repeatable.")
@click.option("--registry", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              help="A directory of .edgepkg bundles (searched recursively).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=str), metavar="PUBLIC.pem",
              help="Only accept bundles signed by this key.")
@click.option("--http", metavar="HOST:PORT", help="Serve the dashboard here, e.g. 127.0.0.1:8765.")
@click.option("--topic-prefix", default="edgeops", show_default=True, help="The agents' --topic-prefix.")
@click.option("--client-id", default="edgeops-monitor", show_default=True,
              help="MQTT client id: the broker keeps this id's queue while the monitor is down.")
@click.option("--share", metavar="GROUP", help="Subscribe through $share/GROUP/...: monitor processes with the "
              "same GROUP (and distinct --client-id) split the messages between them.")
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=str), help="CA certificate for mqtts://.")
@click.option("--evaluate-interval", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              metavar="S", help="Seconds between drift evaluations.")
@click.option("--horizon", type=click.FloatRange(min=1.0), default=900.0, show_default=True, metavar="S",
              help="Drift is evaluated over the windows of the last S seconds.")
@click.option("--stale-after", type=click.FloatRange(min=1.0), default=DEFAULT_STALE_AFTER, show_default=True,
              metavar="S", help="A device with no message for S seconds is flagged stale.")
@click.option("--retention", type=click.FloatRange(min=0.0), default=7.0, show_default=True, metavar="DAYS",
              callback=_days_to_seconds, help="Delete stored windows (and alerts) older than DAYS days; 0 keeps "
              "them forever. Must cover --horizon: a restarted monitor reloads the last horizon's windows.")
@click.option("--drift-retention", type=click.FloatRange(min=0.0), default=2.0, show_default=True, metavar="DAYS",
              callback=_days_to_seconds, help="Delete stored drift results (rows per device and feature, see "
              "--drift-history-interval) older than DAYS days; 0 keeps them forever.")
@click.option("--drift-history-interval", type=click.FloatRange(min=0.0), default=600.0, show_default=True,
              metavar="S", callback=_finite_seconds, help="Store a device's drift result for a feature only when "
              "it drifts, when its drift flag changed, or once every S seconds while it stays the same; 0 stores "
              "every result of every evaluation.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="False discovery rate of the drift tests (Benjamini-Hochberg).")
@click.option("--min-psi", type=click.FloatRange(min=0.0), default=0.1, show_default=True,
              help="A drifting feature must also move this much (population stability index).")
@click.option("--min-rows", type=click.IntRange(min=1), default=200, show_default=True,
              help="Rows a device needs in the horizon before it is tested.")
@click.option("--fleet-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="A feature drifting on this share of the tested devices (and on at least two) is fleet-wide "
                   "drift: one alert for the fleet instead of one per device.")
@click.option("--enter-after", type=click.IntRange(min=1), default=2, show_default=True,
              help="Raise an alert after this many drifting evaluations in a row.")
@click.option("--exit-after", type=click.IntRange(min=1), default=3, show_default=True,
              help="Clear it after this many clean evaluations in a row.")
@click.option("--webhook", metavar="URL", help="POST every alert (JSON) to this URL.")
@click.option("--retrain-webhook", metavar="URL", help="POST raised drift alerts to this URL (a retraining pipeline).")
@click.option("--on-drift-command", metavar="CMD", help="Run CMD for each raised drift alert, with the alert JSON "
              "on stdin and EDGEOPS_* variables (see docs/fleet-monitor.md).")
@click.option("--command-timeout", type=click.FloatRange(min=1.0), default=300.0, show_default=True, metavar="S",
              help="Kill --on-drift-command after S seconds.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              help="Private broker and default database location (default $XDG_STATE_HOME/edgeops).")
@click.option("--broker-listen", metavar="HOST[:PORT]", default="127.0.0.1", show_default=True,
              help="Private broker only: the address it listens on (port: the previous run's, else a free one).")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=500, show_default=True,
              help="Messages stored per transaction, at most.")
@click.option("--batch-delay", type=click.FloatRange(min=0.0), default=0.2, show_default=True, metavar="S",
              help="Longest wait for a batch to fill.")
@click.option("--parse-workers", type=click.IntRange(0, 64), default=None,
              help="Worker processes that decode, validate, store and count the telemetry (default: one per "
                   "core, up to 4; 0: all in the monitor process).")
def monitor_command(broker, db, bundles, registry, key, http, topic_prefix, client_id, share, ca_file,
                    evaluate_interval, horizon, stale_after, retention, drift_retention, drift_history_interval,
                    alpha, min_psi, min_rows, fleet_fraction, enter_after, exit_after,
                    webhook, retrain_webhook, on_drift_command, command_timeout, state_dir, broker_listen,
                    batch_size, batch_delay, parse_workers):
    """Subscribe to the agents' telemetry, store it, detect drift and send alerts.

    Windows are stored once per (device, seq) however often they arrive; the monitor's broker
    session is persistent and messages are acknowledged only once stored, so a monitor that is
    stopped or killed loses nothing. Give the bundles the devices run (--bundle / --registry):
    their reference statistics are what drift is measured against. Stop with Ctrl-C or SIGTERM.
    """
    from pathlib import Path

    from ..fleet.alerts import AlertDispatcher
    from ..fleet.broker import PrivateBroker, default_state_dir, parse_broker_url
    from ..fleet.detectors import DetectorConfig
    from ..fleet.evaluation import EvaluatorConfig
    from ..fleet.ingest import DEVICE_ID
    from ..fleet.monitor import Monitor, MonitorConfig
    from ..fleet.pool import default_workers
    from ..fleet.references import load_references

    if share is not None and not DEVICE_ID.fullmatch(share):
        raise UsageError(f"--share {share!r} is not a valid group name", "use letters, digits, '.', '_' or '-'")
    if "+" in topic_prefix or "#" in topic_prefix or not topic_prefix.strip("/"):
        raise UsageError(f"--topic-prefix {topic_prefix!r} is not a valid prefix", "use the agents' --topic-prefix")
    if retention is not None and retention < horizon:
        raise UsageError(f"--retention {retention / 86400:g} days keeps less than the --horizon of {horizon:g} s: "
                         "a restarted monitor rebuilds its drift counts from the windows of the last horizon",
                         f"use --retention {math.ceil(horizon / 864) / 100:g} or more, or 0 to keep windows forever")
    state = Path(state_dir) if state_dir else default_state_dir()
    db_url = db or f"sqlite:///{state / 'fleet.db'}"
    if db is None:
        state.mkdir(parents=True, exist_ok=True)
    dashboard_at = _host_port(http, "--http") if http else None
    references = load_references(bundles, registry, trusted_key=key)
    if not references:
        _log("warning: no --bundle or --registry: only bundles already in the database are checked for drift")
    for ref in references.values():
        _log(f"reference: {ref.name} {ref.version} (bundle {ref.bundle_id[:12]}...) from {ref.path}")

    private = None
    if broker is None:
        host, _, port = broker_listen.partition(":")
        if port and not port.isdigit():
            raise UsageError(f"--broker-listen {broker_listen!r} is not HOST[:PORT]", "e.g. 0.0.0.0:1883")
        private = PrivateBroker(state / "broker", host=host or "127.0.0.1", port=int(port) if port else None)
        private.start()
        broker = private.url
        _log(f"started a private Mosquitto: agents use --broker {private.url}")
    config = MonitorConfig(
        broker=parse_broker_url(broker), db_url=db_url, topic_prefix=topic_prefix.strip("/"),
        client_id=client_id, share=share, ca_file=ca_file, batch_size=batch_size, batch_delay=batch_delay,
        parse_workers=default_workers() if parse_workers is None else parse_workers,
        evaluator=EvaluatorConfig(evaluate_interval=evaluate_interval, horizon_s=horizon, stale_after=stale_after,
                                  retention_s=retention, drift_retention_s=drift_retention,
                                  drift_history_interval=drift_history_interval,
                                  detector=DetectorConfig(alpha=alpha, min_psi=min_psi, min_rows=min_rows,
                                                          fleet_fraction=fleet_fraction, enter_after=enter_after,
                                                          exit_after=exit_after)))
    dispatcher = AlertDispatcher(prefix=config.topic_prefix, webhook=webhook, retrain_webhook=retrain_webhook,
                                 command=on_drift_command, command_timeout=command_timeout, log=_log)
    monitor = Monitor(config, references, alerts=dispatcher, log=_log)
    dispatcher.publish = monitor.publish
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dashboard = None
    try:
        _log(f"database: {db_url}")
        monitor.start()
        dispatcher.start()
        if dashboard_at:
            from ..fleet.web.server import start_dashboard

            dashboard = start_dashboard(db_url, dashboard_at[0], dashboard_at[1], mqtt_status=monitor.mqtt_status)
            _log(f"dashboard: {dashboard.url}")
        if monitor.wait_connected(CONNECT_WAIT_S):
            _log(f"subscribed to {config.topic_prefix}/v1/devices/+/(status|heartbeat|telemetry) on "
                 f"{config.broker.url}" + (f" as shared group {share}" if share else ""))
        else:
            _log(f"not connected to {config.broker.url} yet: retrying in the background (check that the broker "
                 "runs and the URL is right)")
        while not stop.wait(1.0):
            pass
        _log("stopping: storing and acknowledging what was received")
    finally:
        if dashboard is not None:
            dashboard.stop()
        monitor.stop()
        if private is not None:
            private.stop()
    _log(f"stopped: {monitor.stats['received']} message(s) received, {monitor.stats['windows_new']} new window(s), "
         f"{sum(monitor.quarantined.values())} quarantined")


@click.group("fleet")
def fleet_group() -> None:
    """Look at the fleet the monitor sees (devices, liveness, drift)."""


@fleet_group.command("status")
@click.option("--db", metavar="URL", help="The monitor's database (default: $XDG_STATE_HOME/edgeops/fleet.db).")
@click.option("--stale-after", type=click.FloatRange(min=1.0), default=DEFAULT_STALE_AFTER, show_default=True,
              metavar="S", help="A device with no message for S seconds counts as stale.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
def status_command(db, stale_after, as_json):
    """Devices, online / offline / stale, model version, p95 latency, drift and its top features."""
    from ..fleet.status import fleet_status

    report = fleet_status(db or _default_db(), stale_after=stale_after)
    if as_json:
        output.emit_json(report)
        return
    rows = []
    for d in report["devices"]:
        bundle = d.get("bundle") or {}
        drift = d["drift"]
        flag = "DRIFT" if drift["drifted"] else ("-" if drift["tested"] == 0 else "ok")
        rows.append([d["device_id"], d["state"], f"{bundle.get('name') or '?'} {bundle.get('version') or ''}".strip(),
                     output.fmt_num(d.get("p95_latency_ms")), d.get("windows"), flag,
                     ", ".join(f["feature"] for f in d["top_features"][:3]) or "-",
                     ", ".join(d["alerts"]) or "-"])
    console = output.stdout_console
    console.print(output.table(f"Fleet ({len(rows)} devices)", ["device", "state", "model", "p95 ms", "windows",
                                                              "drift", "top features", "alerts"], rows))
    # The fleet aggregate also moves when one device drifts; only scope "fleet" is fleet-wide.
    wide = [f["feature"] for f in report["fleet"]["drift"] if f["drifted"] and f.get("scope") == "fleet"]
    local = [f["feature"] for f in report["fleet"]["drift"] if f["drifted"] and f.get("scope") != "fleet"]
    line = "fleet-wide drift: " + (", ".join(wide) if wide else "none")
    if local:
        line += f" (the fleet aggregate also moves on {', '.join(local[:5])}{' ...' if len(local) > 5 else ''}" \
                ", driven by the device-level drift above)"
    console.print(line + f"; quarantined messages: {sum(report['quarantined'].values())}")
