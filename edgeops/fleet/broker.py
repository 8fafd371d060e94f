"""The MQTT side of the monitor: a private Mosquitto when no broker is given.

A private broker listens on loopback by default, keeps its persistence (queued QoS 1 messages of
persistent sessions) in the monitor's state directory and reuses the port of its previous run,
so agents configured with the printed URL keep working across monitor restarts.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# One broker-URL parser for the agent and the monitor (mqtt://, mqtts://, user:pass@).
from ..agent.mqtt import BrokerConfig as BrokerURL  # noqa: F401  (re-exported for the monitor)
from ..agent.mqtt import parse_broker_url  # noqa: F401
from ..errors import EdgeOpsError

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerUnavailableError(EdgeOpsError):
    """No broker was given and none can be started here (exit 4, like a missing dependency)."""

    exit_code = 4


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/edgeops, else ~/.local/state/edgeops (never the current directory)."""
    base = os.environ.get("XDG_STATE_HOME")
    return (Path(base) if base else Path.home() / ".local" / "state") / "edgeops"


def find_mosquitto() -> str | None:
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class PrivateBroker:
    """A Mosquitto child process; ``stop()`` ends it (also called by the monitor on exit)."""

    def __init__(self, directory: str | Path, host: str = "127.0.0.1", port: int | None = None,
                 executable: str | None = None, extra_config: str = ""):
        self.directory = Path(directory)
        self.host = host
        self.requested_port = port
        self.executable = executable or find_mosquitto()
        self.extra_config = extra_config
        self.process: subprocess.Popen | None = None
        self.adopted_pid: int | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "PrivateBroker":
        if not self.executable:
            raise BrokerUnavailableError(
                "no MQTT broker: --broker was not given and Mosquitto is not installed here",
                "install it (Debian/Ubuntu: apt install mosquitto) or pass --broker mqtt://HOST:1883")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._adopt():
            return self
        last_error = ""
        for attempt in range(3):
            self.port = self._choose_port(first=attempt == 0)
            conf = self._write_config()
            log = open(self.directory / "mosquitto.stderr", "ab")
            try:
                self.process = subprocess.Popen([self.executable, "-c", str(conf)], stdout=log, stderr=log,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            finally:
                log.close()
            if self._wait_ready(timeout):
                (self.directory / "port").write_text(str(self.port))
                return self
            last_error = self._tail_log()
            self.stop()
        raise BrokerUnavailableError(f"the private Mosquitto did not start: {last_error or 'no output'}",
                                     f"see {self.directory / 'mosquitto.log'}, or pass --broker mqtt://HOST:1883")

    def _adopt(self) -> bool:
        """Take over the broker of a previous monitor run that was killed before it could stop it.

        It holds that run's queued messages and listens on the port agents know, so it is the
        right broker to keep using (a monitor killed with SIGKILL cannot stop its broker).
        """
        try:
            pid = int((self.directory / "mosquitto.pid").read_text().strip())
            port = int((self.directory / "port").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return False
        if str(self.directory / "mosquitto.conf").encode() not in cmdline:
            return False  # the pid was reused by an unrelated process
        if (self.requested_port and port != self.requested_port) or not wait_for_port(self.host, port, 2.0):
            return False
        self.port, self.adopted_pid = port, pid
        return True

    def _choose_port(self, first: bool) -> int:
        if self.requested_port:
            return self.requested_port
        # Reuse the previous run's port so that agents keep the URL they were given.
        saved = self.directory / "port"
        if first and saved.is_file():
            try:
                port = int(saved.read_text().strip())
            except ValueError:
                port = 0
            if 0 < port < 65536 and _port_free(self.host, port):
                return port
        return free_port(self.host)

    def _write_config(self) -> Path:
        conf = self.directory / "mosquitto.conf"
        # Persistent sessions of the monitor (and of agents) survive a broker restart; a large
        # queue keeps the windows for a monitor that is down for a while instead of dropping them.
        lines = [f"listener {self.port} {self.host}", "allow_anonymous true",
                 "persistence true", f"persistence_location {self.directory}/", "autosave_interval 30",
                 "max_queued_messages 100000", f"log_dest file {self.directory / 'mosquitto.log'}",
                 f"pid_file {self.directory / 'mosquitto.pid'}",
                 "log_type error", "log_type warning", "log_type notice"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, Mosquitto would drop to the user "mosquitto", which cannot write
            # the persistence file here: it keeps the monitor's own user instead.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n" + self.extra_config)
        return conf

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if wait_for_port(self.host, self.port, 0.2):
                return True
        return False

    def _tail_log(self) -> str:
        for name in ("mosquitto.log", "mosquitto.stderr"):
            path = self.directory / name
            if path.is_file():
                lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
                if lines:
                    return lines[-1][-300:]
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.adopted_pid is not None:
            pid, self.adopted_pid = self.adopted_pid, None
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + timeout
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # Mosquitto saves its persistence file on SIGTERM
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
