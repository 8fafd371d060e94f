"""Device profiles: validated data loaded from devices/*.yaml.

A profile says what a device is (CPU, GPU, memory, OS), which inference runtimes it can
install and up to which ONNX opset / IR version they load, and the budgets a model must
meet on it. The YAML is checked against devices/schema.json (unknown keys are rejected by
name) and then against the rules JSON Schema cannot express (name == file stem, RAM
budgets that fit, runtime limits within what the runtime version implements).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ProfileError

SCHEMA_VERSION = 1
_PROFILE_SUFFIXES = (".yaml", ".yml")
_DOCS_HINT = "see docs/device-profiles.md for the format"

# onnxruntime's published compatibility table (docs/reference/compatibility.md):
# release -> (ai.onnx opset, ai.onnx.ml opset, IR version) it implements. Used to reject a
# profile that claims more than its runtime loads; releases not listed here are not checked.
ORT_LIMITS: dict[tuple[int, int], tuple[int, int, int]] = {
    (1, 20): (21, 4, 10), (1, 19): (21, 4, 10), (1, 18): (21, 4, 10), (1, 17): (20, 4, 9),
    (1, 16): (19, 3, 9), (1, 15): (19, 3, 8), (1, 14): (18, 3, 8), (1, 13): (17, 3, 8),
    (1, 12): (17, 3, 8), (1, 11): (16, 2, 8), (1, 10): (15, 2, 8), (1, 9): (15, 2, 8),
    (1, 8): (14, 2, 7), (1, 7): (13, 2, 7), (1, 6): (13, 2, 7), (1, 5): (12, 2, 7),
    (1, 4): (12, 2, 7), (1, 3): (12, 2, 7), (1, 2): (11, 2, 6), (1, 1): (11, 2, 6),
    (1, 0): (11, 2, 6),
}

# /proc/cpuinfo flags that mean int8 dot-product / float16 arithmetic instructions.
_DOT_FLAGS = {"aarch64": {"asimddp"}, "x86_64": {"avx512_vnni", "avx_vnni"}}
_FP16_FLAGS = {"aarch64": {"asimdhp"}}


def onnxruntime_limits(version: str) -> tuple[int, int, int] | None:
    """(max opset, max ai.onnx.ml opset, max IR version) of an onnxruntime release, if known."""
    m = re.match(r"^(\d+)\.(\d+)", version)
    return ORT_LIMITS.get((int(m.group(1)), int(m.group(2)))) if m else None


@dataclass(frozen=True)
class CpuSpec:
    arch: str
    model: str
    cores: int
    clock_mhz: int | None
    int8_dot_product: bool
    fp16_arithmetic: bool
    simd: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuSpec:
    model: str
    architecture: str
    cuda_cores: int
    compute_capability: str | None
    fp16: bool
    int8: bool
    tensor_cores: int = 0


@dataclass(frozen=True)
class MemorySpec:
    ram_mb: int
    usable_ram_mb: int
    shared_with_gpu: bool = False


@dataclass(frozen=True)
class OsSpec:
    name: str
    python: str
    glibc: str | None = None
    codename: str | None = None  # release codename (bookworm, jammy); what `verify --target` emulates


@dataclass(frozen=True)
class OnnxRuntimeSpec:
    version: str
    max_opset: int
    max_ir_version: int
    max_ml_opset: int
    package: str = "onnxruntime"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class TFLiteRuntimeSpec:
    version: str
    package: str  # ai-edge-litert | tflite-runtime


@dataclass(frozen=True)
class RuntimesSpec:
    onnxruntime: OnnxRuntimeSpec | None
    litert: TFLiteRuntimeSpec | None


@dataclass(frozen=True)
class Budgets:
    latency_ms: float
    ram_mb: float
    model_size_mb: float


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    display_name: str
    device_tree_model: str | None
    cpu: CpuSpec
    gpu: GpuSpec | None
    memory: MemorySpec
    os: OsSpec
    runtimes: RuntimesSpec
    budgets: Budgets
    notes: str = ""
    source_path: Path | None = field(default=None, compare=False)

    @property
    def onnx_runtime(self) -> OnnxRuntimeSpec | None:
        """The device's onnxruntime, or None when no wheel exists for it."""
        return self.runtimes.onnxruntime

    @property
    def tflite_runtime(self) -> TFLiteRuntimeSpec | None:
        """The device's LiteRT / tflite-runtime, or None when no wheel exists for it."""
        return self.runtimes.litert

    def to_dict(self) -> dict[str, Any]:
        """The profile as schema-shaped data (it validates against devices/schema.json)."""
        ort, lite = self.runtimes.onnxruntime, self.runtimes.litert
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "display_name": self.display_name,
            "device_tree_model": self.device_tree_model,
            "cpu": {**dataclasses.asdict(self.cpu), "simd": list(self.cpu.simd)},
            "gpu": dataclasses.asdict(self.gpu) if self.gpu else None,
            "memory": dataclasses.asdict(self.memory),
            "os": dataclasses.asdict(self.os),
            "runtimes": {
                "onnxruntime": ({**dataclasses.asdict(ort),
                                 "execution_providers": list(ort.execution_providers)}
                                if ort else None),
                "litert": dataclasses.asdict(lite) if lite else None,
            },
            "budgets": dataclasses.asdict(self.budgets),
            "notes": self.notes,
        }

    def with_budgets(self, latency_ms: float | None = None, ram_mb: float | None = None,
                     model_size_mb: float | None = None) -> "DeviceProfile":
        """A copy with some budgets overridden (None keeps the profile's value)."""
        overrides = {"latency_ms": latency_ms, "ram_mb": ram_mb, "model_size_mb": model_size_mb}
        changes = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ProfileError(f"budget {key} must be a positive number, got {value!r}",
                                   f"pass a value greater than 0 for {key}")
            changes[key] = value
        return dataclasses.replace(self, budgets=dataclasses.replace(self.budgets, **changes))


# ---------------------------------------------------------------- loading

def profiles_dir() -> Path:
    """The directory of the shipped profiles (devices/ in a checkout, edgeops/devices in a wheel)."""
    return Path(str(resources.files("edgeops.devices")))


def list_profiles() -> list[DeviceProfile]:
    """Every shipped profile, sorted by name."""
    return [_load_file(path, path.name) for path in _shipped_files()]


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name (``rpi4``), or the user's profile file by path.

    A string is read as a path when it ends in .yaml/.yml or contains a directory separator.
    Raises ProfileError for an unknown name, a missing file or an invalid profile; the
    message names the file and the offending key path.
    """
    if isinstance(name_or_path, Path) or _looks_like_path(str(name_or_path)):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ProfileError(f"device profile file {path} {what}",
                               "pass a .yaml profile file or a known profile name "
                               "(edgeops devices list)")
        return _load_file(path, str(name_or_path))
    name = str(name_or_path)
    known = {p.stem: p for p in _shipped_files()}
    if name not in known:
        close = sorted(difflib.get_close_matches(name, known, n=3))
        own = f"pass the path of your own profile file (.yaml); {_DOCS_HINT}"
        hint = f"did you mean {' or '.join(close)}? Otherwise {own}" if close else own.capitalize()
        raise ProfileError(
            f"unknown device profile '{name}'; known profiles: {', '.join(sorted(known))}", hint)
    return _load_file(known[name], known[name].name)


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith(_PROFILE_SUFFIXES) or "/" in text or "\\" in text


def _shipped_files() -> list[Path]:
    root = profiles_dir()
    return sorted(p for p in root.iterdir() if p.suffix in _PROFILE_SUFFIXES and p.is_file())


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads((resources.files("edgeops.devices") / "schema.json").read_text("utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _load_file(path: Path, label: str) -> DeviceProfile:
    """Read, validate and build one profile; ``label`` is how messages name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{label}: cannot read the profile: {exc}") from exc
    data = _parse_yaml(text, label)
    _check_schema(data, label)
    _check_rules(data, path.stem, label)
    return _build(data, path)


def _parse_yaml(text: str, label: str) -> dict:
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(f"{label}: not valid YAML{where}: {problem}", _DOCS_HINT) from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{label}: expected a mapping of keys at the top level, "
                           f"got {type(data).__name__}", _DOCS_HINT)
    return data


@lru_cache(maxsize=1)
def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: construct_mapping reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _key_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_schema(data: dict, label: str) -> None:
    validator = _validator()
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)),
                                                                e.message))
    if not errors:
        return
    problems, hint = [], _DOCS_HINT
    for err in errors:
        where = _key_path(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = sorted(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(allowed), key=str):
                problems.append(f"{_key_path([*err.absolute_path, key])}: unknown key "
                                f"(allowed here: {', '.join(allowed)})")
            continue
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            problems.append(f"{_key_path([*err.absolute_path, missing])}: missing required key")
            continue
        if err.validator == "type" and isinstance(err.instance, (int, float)) \
                and "string" in err.validator_value:
            hint = 'quote version numbers so YAML keeps them as text, e.g. python: "3.10"'
        problems.append(f"{where or '(top level)'}: {err.message}")
    shown = problems[:5]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ProfileError(f"{label}: " + "; ".join(shown) + more, hint)


def _check_rules(data: dict, stem: str, label: str) -> None:
    """Rules across fields that JSON Schema cannot state."""
    problems = []
    if data["name"] != stem:
        raise ProfileError(f"{label}: name: '{data['name']}' does not match the file name '{stem}'",
                           f"rename the file to {data['name']}.yaml or set name: {stem}")
    mem, budgets, cpu = data["memory"], data["budgets"], data["cpu"]
    if mem["usable_ram_mb"] > mem["ram_mb"]:
        problems.append(f"memory.usable_ram_mb: {mem['usable_ram_mb']} is more than "
                        f"memory.ram_mb {mem['ram_mb']}")
    if budgets["ram_mb"] > mem["usable_ram_mb"]:
        problems.append(f"budgets.ram_mb: {budgets['ram_mb']} is more than "
                        f"memory.usable_ram_mb {mem['usable_ram_mb']}")
    simd = set(cpu.get("simd", []))
    for key, flags in (("int8_dot_product", _DOT_FLAGS), ("fp16_arithmetic", _FP16_FLAGS)):
        expected = flags.get(cpu["arch"])
        if expected is not None and cpu[key] != bool(simd & expected):
            problems.append(f"cpu.{key}: {str(cpu[key]).lower()} disagrees with cpu.simd "
                            f"(which {'lacks' if cpu[key] else 'has'} {'/'.join(sorted(expected))})")
    ort = data["runtimes"]["onnxruntime"]
    limits = onnxruntime_limits(ort["version"]) if ort else None
    if limits:
        for key, most in zip(("max_opset", "max_ml_opset", "max_ir_version"), limits):
            if ort[key] > most:
                problems.append(f"runtimes.onnxruntime.{key}: {ort[key]} is more than onnxruntime "
                                f"{ort['version']} implements ({most})")
    if problems:
        raise ProfileError(f"{label}: " + "; ".join(problems), _DOCS_HINT)


def _build(data: dict, path: Path) -> DeviceProfile:
    cpu = dict(data["cpu"])
    cpu["simd"] = tuple(cpu.get("simd", ()))
    ort = data["runtimes"]["onnxruntime"]
    if ort is not None:
        ort = dict(ort)
        if "execution_providers" in ort:
            ort["execution_providers"] = tuple(ort["execution_providers"])
        ort = OnnxRuntimeSpec(**ort)
    lite = data["runtimes"]["litert"]
    return DeviceProfile(
        name=data["name"],
        display_name=data["display_name"],
        device_tree_model=data.get("device_tree_model"),
        cpu=CpuSpec(**cpu),
        gpu=GpuSpec(**data["gpu"]) if data.get("gpu") else None,
        memory=MemorySpec(**data["memory"]),
        os=OsSpec(**data["os"]),
        runtimes=RuntimesSpec(onnxruntime=ort,
                              litert=TFLiteRuntimeSpec(**lite) if lite else None),
        budgets=Budgets(**data["budgets"]),
        notes=(data.get("notes") or "").strip(),
        source_path=path.resolve(),
    )
