"""The agent's settings: command line > environment (EDGEOPS_AGENT_*) > TOML config file > defaults.

One table (OPTIONS) describes every setting once: its type, default and help text. The command
line, the environment variables and the config file keys are all derived from it, so the three
can never disagree about a name. Unknown config-file keys are errors (a typo must not silently
fall back to a default on a device nobody watches).
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from ..errors import InputFileError, UsageError

ENV_PREFIX = "EDGEOPS_AGENT_"
RANGE_CHECKS = ("reject", "warn", "off")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Option:
    name: str
    type: str  # "str" | "path" | "int" | "float" | "bool" | a choice "a|b|c"
    default: object
    help: str
    metavar: str | None = None
    secret: bool = False  # never logged


OPTIONS: tuple[Option, ...] = (
    Option("bundle", "path", None, "the .edgepkg bundle to serve", "BUNDLE"),
    Option("host", "str", "127.0.0.1", "address to listen on (0.0.0.0 for every interface)", "ADDR"),
    Option("port", "int", 8080, "HTTP port (0 picks a free one; the log says which)", "PORT"),
    Option("token", "str", None, "bearer token required on /v1/predict, /v1/feedback and /metrics",
           "TOKEN", secret=True),
    Option("token_file", "path", None, "read the bearer token from this file", "FILE"),
    Option("broker", "str", None, "MQTT broker: mqtt://HOST[:1883] or mqtts://HOST[:8883]; "
                                  "no broker: no telemetry", "URL"),
    Option("broker_username", "str", None, "MQTT user name (or user:pass@ in the URL)", "USER"),
    Option("broker_password", "str", None, "MQTT password (prefer the environment or the config file)",
           "PASSWORD", secret=True),
    Option("broker_ca_file", "path", None, "CA certificate (PEM) for mqtts:// (default: the system's)", "FILE"),
    Option("topic_prefix", "str", "edgeops", "MQTT topic prefix", "PREFIX"),
    Option("device_id", "str", None, "device id (default: the host name, sanitized)", "ID"),
    Option("telemetry_interval", "float", 60.0, "seconds per telemetry window", "SECONDS"),
    Option("heartbeat_interval", "float", 30.0, "seconds between heartbeats", "SECONDS"),
    Option("buffer_dir", "path", None, "outbox and extracted bundles (default: $STATE_DIRECTORY or "
                                       "~/.local/state/edgeops-agent)", "DIR"),
    Option("buffer_max_windows", "int", 10000, "windows kept in the outbox before the oldest are dropped", "N"),
    Option("sample_rate", "float", 0.0, "fraction of accepted rows sent as raw samples (0 = never)", "P"),
    Option("trusted_key", "path", None, "Ed25519 public key (PEM): a signed bundle must be signed by it",
           "PUB.pem"),
    Option("require_signature", "bool", False, "refuse a bundle that is not signed by --trusted-key"),
    Option("candidate", "path", None, "a second bundle answering a share (--split) of the requests",
           "BUNDLE"),
    Option("split", "float", None, "share of requests for --candidate, 0..1 (default 0.1)", "FRACTION"),
    Option("shadow", "path", None, "a second bundle run on the same requests; its answers are discarded",
           "BUNDLE"),
    Option("shadow_queue", "int", 64, "requests waiting for the shadow before new ones are dropped", "N"),
    Option("range_check", "|".join(RANGE_CHECKS), "reject",
           "values far outside the reference range: reject (422), warn, or off", "MODE"),
    Option("range_tolerance", "float", 3.0, "how far is far: beyond min - K*w or max + K*w, w the "
                                            "reference range's width", "K"),
    Option("max_body_bytes", "int", 1 << 20, "largest request body (413 beyond)", "BYTES"),
    Option("max_batch_rows", "int", 1024, "most rows in one request (413 beyond)", "N"),
    Option("max_connections", "int", 64, "concurrent connections (503 beyond)", "N"),
    Option("request_timeout", "float", 10.0, "seconds a client may take to send a request, or stay idle",
           "SECONDS"),
    Option("threads", "int", None, "runtime threads per inference (default: the runtime's)", "N"),
    Option("flush_timeout", "float", 5.0, "seconds to publish buffered windows on stop", "SECONDS"),
    Option("feedback_max_requests", "int", 10000, "predictions remembered for /v1/feedback", "N"),
)
BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class AgentConfig:
    bundle: str
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    broker: str | None = None
    broker_username: str | None = None
    broker_password: str | None = None
    broker_ca_file: str | None = None
    topic_prefix: str = "edgeops"
    device_id: str = "device"
    telemetry_interval: float = 60.0
    heartbeat_interval: float = 30.0
    buffer_dir: str = ""
    buffer_max_windows: int = 10000
    sample_rate: float = 0.0
    trusted_key: str | None = None
    require_signature: bool = False
    candidate: str | None = None
    split: float = 0.0
    shadow: str | None = None
    shadow_queue: int = 64
    range_check: str = "reject"
    range_tolerance: float = 3.0
    max_body_bytes: int = 1 << 20
    max_batch_rows: int = 1024
    max_connections: int = 64
    request_timeout: float = 10.0
    threads: int | None = None
    flush_timeout: float = 5.0
    feedback_max_requests: int = 10000

    def describe(self) -> str:
        """The settings that differ from the defaults, secrets masked: one line for the start-up log."""
        hidden = {o.name for o in OPTIONS if o.secret}
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "bundle" and value != f.default:
                if f.name in hidden:
                    value = "***"
                elif f.name == "broker":  # mqtt://user:PASSWORD@host
                    value = re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", value)
                parts.append(f"{f.name}={value}")
        return " ".join(parts)


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


def load_config(cli: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None,
                config_file: str | Path | None = None) -> AgentConfig:
    """Merge the sources (CLI > env > file > defaults), check every value, return the config.

    ``cli`` holds only the options given on the command line (None values are ignored);
    ``env`` defaults to os.environ; ``config_file`` defaults to $EDGEOPS_AGENT_CONFIG.
    """
    env = os.environ if env is None else env
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    unknown = sorted(set(cli) - set(BY_NAME))
    if unknown:
        raise UsageError(f"unknown agent option(s): {', '.join(unknown)}", _known_hint())
    config_file = config_file or env.get(env_name("config")) or None
    merged: dict[str, object] = {o.name: o.default for o in OPTIONS}
    if config_file:
        merged.update(read_config_file(config_file))
    for option in OPTIONS:
        raw = env.get(env_name(option.name))
        if raw:  # an empty variable (e.g. left blank in an EnvironmentFile) means "not set"
            merged[option.name] = parse_value(option, raw, f"environment variable {env_name(option.name)}")
    for name, value in cli.items():
        merged[name] = parse_value(BY_NAME[name], value, f"--{name.replace('_', '-')}")
    return _finish(merged, env)


def read_config_file(path: str | Path) -> dict[str, object]:
    """The settings in a TOML file: flat `key = value` lines named like the options (underscores)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            from ..errors import MissingDependencyError

            raise MissingDependencyError("tomli", "agent", "reading the agent's config file") from None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputFileError(f"cannot read the config file {path}: {exc.strerror or exc}", "check the path") from None
    except UnicodeDecodeError:
        raise InputFileError(f"the config file {path} is not UTF-8 text", "write it as UTF-8 TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"the config file {path} is not valid TOML: {exc}",
                         'write one `key = value` per line, e.g. port = 8080, broker = "mqtt://host"') from None
    values = {}
    for key, value in data.items():
        option = BY_NAME.get(key.replace("-", "_"))
        if option is None:
            raise UsageError(f"unknown key '{key}' in the config file {path}", _known_hint())
        values[option.name] = parse_value(option, value, f"'{key}' in {path}")
    return values


def _known_hint() -> str:
    return "known settings: " + ", ".join(o.name for o in OPTIONS)


def parse_value(option: Option, value, where: str):
    """One setting's value from text (CLI, env) or a TOML value, checked against its type."""
    kind = option.type
    if value is None:
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise UsageError(f"{where}: expected true or false, got {value!r}", "use true/false (or 1/0)")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError(f"{where}: expected a number, got {value!r}", f"give a{'n integer' if kind == 'int' else ' number'}")
        try:
            number = int(value) if kind == "int" else float(value)
        except ValueError:
            raise UsageError(f"{where}: expected a{'n integer' if kind == 'int' else ' number'}, got {value!r}",
                             "check the value") from None
        if kind == "int" and isinstance(value, float) and value != number:
            raise UsageError(f"{where}: expected an integer, got {value!r}", "drop the fraction")
        return number
    if not isinstance(value, str):
        raise UsageError(f"{where}: expected text, got {value!r}", "quote the value")
    if "|" in kind and value not in kind.split("|"):
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(kind.split('|'))}", "pick one of them")
    if kind == "path" and value:
        return str(Path(value).expanduser())
    return value


def _finish(v: dict, env: Mapping[str, str]) -> AgentConfig:
    if not v["bundle"]:
        raise UsageError("no bundle to serve", "pass `edgeops agent run BUNDLE.edgepkg` "
                                               f"(or set {env_name('bundle')} / bundle in the config file)")
    token = v.pop("token")
    token_file = v.pop("token_file")
    if token and token_file:
        raise UsageError("both a token and a token file are set", "keep one of them")
    if token_file:
        token = _read_token(token_file)
    if token is not None and not token.strip():
        raise UsageError("the bearer token is empty", "set a non-empty token, or none to disable auth")
    v["token"] = token.strip() if token else None
    _check_ranges(v)
    if v["require_signature"] and not v["trusted_key"]:
        raise UsageError("--require-signature needs the trusted public key", "pass --trusted-key PUB.pem")
    if v["split"] is not None and not v["candidate"]:
        raise UsageError("--split needs --candidate BUNDLE", "pass the bundle that answers that share")
    if v["candidate"] and v["split"] is None:
        v["split"] = 0.1
    v["split"] = v["split"] or 0.0
    v["device_id"] = _device_id(v["device_id"])
    v["buffer_dir"] = str(Path(v["buffer_dir"] or default_buffer_dir(env)).expanduser())
    return AgentConfig(**v)


def _check_ranges(v: dict) -> None:
    checks = [("port", 0, 65535), ("telemetry_interval", 0.05, 86400.0), ("heartbeat_interval", 0.5, 86400.0),
              ("buffer_max_windows", 1, 10_000_000), ("sample_rate", 0.0, 1.0), ("range_tolerance", 0.0, 1e6), ("shadow_queue", 1, 100_000),
              ("max_body_bytes", 64, 1 << 30), ("max_batch_rows", 1, 10_000_000), ("max_connections", 1, 10_000),
              ("request_timeout", 0.1, 3600.0), ("flush_timeout", 0.0, 600.0),
              ("feedback_max_requests", 1, 10_000_000), ("split", 0.0, 1.0), ("threads", 1, 1024)]
    for name, low, high in checks:
        value = v[name]
        if value is not None and not low <= value <= high:
            raise UsageError(f"--{name.replace('_', '-')} {value} is outside [{low}, {high}]", "give a value in range")


def _read_token(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}",
                             "check the path and its permissions") from None


def default_buffer_dir(env: Mapping[str, str]) -> str:
    """systemd's StateDirectory= (the first entry) when run as a service, else a per-user directory."""
    state = (env.get("STATE_DIRECTORY") or "").split(":")[0]
    return state or str(Path("~/.local/state/edgeops-agent").expanduser())


_DEVICE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _device_id(given: str | None) -> str:
    if given:
        if not _DEVICE_ID.match(given):
            raise UsageError(f"device id {given!r} is not 1-64 characters of A-Z a-z 0-9 . _ -",
                             "pick another --device-id (it becomes part of MQTT topics)")
        return given
    return sanitize_device_id(socket.gethostname())


def sanitize_device_id(name: str) -> str:
    """The host name made into a valid device id (invalid characters become '-')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name or "").strip("-")[:64]
    return cleaned or "device"
