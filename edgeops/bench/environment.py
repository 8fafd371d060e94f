"""The machine a benchmark ran on: CPU, clocks, throttling, memory, OS and package versions.

A benchmark number means little without these (a Raspberry Pi on the "powersave" governor
or throttled by heat is a different machine). Every value is read best-effort: what this
machine does not expose is None, and nothing here raises.
"""
from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from pathlib import Path

PACKAGES = ("numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime", "onnx", "edgeops")
_CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")
_DEVICE_TREE_MODEL = (Path("/proc/device-tree/model"), Path("/sys/firmware/devicetree/base/model"))


def collect_environment() -> dict:
    board = detect_board()
    return {
        "board": board,
        "cpu_model": _cpu_model(board),
        "machine": platform.machine() or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cpu_governor": _read_text(_CPUFREQ / "scaling_governor"),
        "cpu_cur_freq_mhz": _khz_to_mhz(_read_text(_CPUFREQ / "scaling_cur_freq")),
        "cpu_max_freq_mhz": _khz_to_mhz(_read_text(_CPUFREQ / "cpuinfo_max_freq")),
        "throttled": _vcgencmd_throttled(),
        "thermal_zones_c": _thermal_zones(),
        "total_ram_mb": _total_ram_mb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def detect_board() -> str | None:
    """The device-tree model ("Raspberry Pi 4 Model B Rev 1.4"), or None off ARM boards.

    $EDGEOPS_BOARD overrides it, for containers that hide the device tree."""
    override = os.environ.get("EDGEOPS_BOARD", "").strip()
    if override:
        return override
    for path in _DEVICE_TREE_MODEL:
        text = _read_text(path)
        if text:
            return text
    return None


def _read_text(path: Path) -> str | None:
    try:
        text = path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None


# ARM cores by "CPU part" (implementer 0x41 = Arm), for kernels whose cpuinfo names no model.
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
              "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
              "0xd0c": "Neoverse-N1", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE"}


def _cpu_model(board: str | None) -> str | None:
    return cpu_model_from_cpuinfo(_read_text(Path("/proc/cpuinfo")) or "", board) or platform.processor() or None


def cpu_model_from_cpuinfo(text: str, board: str | None = None) -> str | None:
    """x86: "model name". ARM: the core from "CPU part" plus the board (the SoC's own name is rarely there)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    core = _ARM_PARTS.get(fields.get("CPU part", "").lower()) if fields.get("CPU implementer") == "0x41" else None
    if core and board:
        return f"{core} ({board})"
    return core or board or fields.get("Processor") or fields.get("Hardware") or None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS / Windows
        return None


def _khz_to_mhz(text: str | None) -> float | None:
    try:
        return int(text) / 1000 if text else None
    except ValueError:
        return None


def _vcgencmd_throttled() -> str | None:
    """Raspberry Pi firmware flags: "0x0" is fine; bits 0-3 now, 16-19 since boot (undervoltage, throttling)."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5,
                             stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    _, _, value = out.partition("=")  # "throttled=0x50000"
    return value.strip() or None


def _thermal_zones() -> dict[str, float] | None:
    zones = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read_text(Path(zone) / "temp")
        try:
            celsius = int(raw) / 1000 if raw else None
        except ValueError:
            celsius = None
        if celsius is not None:
            kind = _read_text(Path(zone) / "type") or Path(zone).name
            zones[kind if kind not in zones else Path(zone).name] = celsius
    return zones or None


def _total_ram_mb() -> float | None:
    text = _read_text(Path("/proc/meminfo"))
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                try:
                    return int(line.split()[1]) / 1024  # kB
                except (IndexError, ValueError):
                    return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024 * 1024)
    except (AttributeError, ValueError, OSError):
        return None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # a broken install's metadata must not break the benchmark report
        return None
