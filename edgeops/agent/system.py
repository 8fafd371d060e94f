"""Process and board health for telemetry windows: CPU, memory, temperature, load.

Linux only in substance (/proc and /sys); elsewhere, or where a file is missing or unreadable
(a container without thermal zones), each value is None rather than an error: telemetry must keep
flowing on any device. The roots are parameters so tests can point the parsers at real files made
in a temporary directory.
"""
from __future__ import annotations

import glob
import os
import threading
import time
from pathlib import Path


def _sysconf(name: str) -> int | None:
    try:
        value = os.sysconf(name)
    except (AttributeError, ValueError, OSError):
        return None
    return value if value > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def parse_cpu_seconds(stat_text: str, clock_ticks: int) -> float | None:
    """utime + stime of a /proc/PID/stat line, in seconds.

    The command name (field 2) is in parentheses and may hold spaces or ')', so fields are counted
    after the LAST ')': state is field 3 there, utime field 14 and stime field 15.
    """
    tail = stat_text[stat_text.rfind(")") + 1:].split()
    try:
        return (int(tail[11]) + int(tail[12])) / clock_ticks
    except (IndexError, ValueError):
        return None


def parse_rss_bytes(statm_text: str | None, status_text: str | None, page_size: int | None) -> int | None:
    """Resident memory: statm's second field in pages, else status's VmRSS line in kB."""
    if statm_text and page_size:
        fields = statm_text.split()
        if len(fields) > 1 and fields[1].isdigit():
            return int(fields[1]) * page_size
    for line in (status_text or "").splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def hottest_zone_celsius(sys_root: str | Path = "/sys") -> float | None:
    """The highest temperature over /sys/class/thermal/thermal_zone*/temp (millidegrees Celsius)."""
    best = None
    for name in glob.glob(os.path.join(str(sys_root), "class", "thermal", "thermal_zone*", "temp")):
        text = _read(Path(name))
        try:
            value = int(text.strip()) / 1000.0 if text else None
        except ValueError:
            value = None  # some zones report garbage or nothing while the sensor is off
        if value is not None and (best is None or value > best):
            best = value
    return best


class SystemSampler:
    """``sample()`` reports this process's CPU use since the previous call (or since construction)."""

    def __init__(self, proc_root: str | Path = "/proc", sys_root: str | Path = "/sys", pid: int | str = "self",
                 clock=time.monotonic):
        self._stat = Path(proc_root) / str(pid) / "stat"
        self._statm = Path(proc_root) / str(pid) / "statm"
        self._status = Path(proc_root) / str(pid) / "status"
        self._sys_root = sys_root
        self._clock = clock
        self._ticks = _sysconf("SC_CLK_TCK")
        self._page_size = _sysconf("SC_PAGE_SIZE")
        self._lock = threading.Lock()
        self._last = (self._clock(), self._cpu_seconds())

    def _cpu_seconds(self) -> float | None:
        text = _read(self._stat)
        if text is None or self._ticks is None:
            return None
        return parse_cpu_seconds(text, self._ticks)

    def cpu_percent(self) -> float | None:
        """CPU time over wall time since the last call, as percent of one CPU (can exceed 100)."""
        now, cpu = self._clock(), self._cpu_seconds()
        with self._lock:
            (then, before), self._last = self._last, (now, cpu)
        if cpu is None or before is None or now <= then:
            return None
        return max(0.0, 100.0 * (cpu - before) / (now - then))

    def rss_bytes(self) -> int | None:
        value = parse_rss_bytes(_read(self._statm), None, self._page_size)
        if value is None:  # statm unreadable: the status file says the same in kB
            value = parse_rss_bytes(None, _read(self._status), None)
        return value

    def sample(self) -> dict:
        try:
            load1 = float(os.getloadavg()[0])
        except (AttributeError, OSError):
            load1 = None
        return {"cpu_percent": self.cpu_percent(), "rss_bytes": self.rss_bytes(),
                "temperature_c": hottest_zone_celsius(self._sys_root), "load1": load1}
