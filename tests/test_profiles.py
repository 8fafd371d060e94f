"""Device profiles: the shipped YAML files, validation errors users see, and `edgeops devices`."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from edgeops.cli import devices as devices_cli
from edgeops.errors import ProfileError, UsageError
from edgeops.profiles import (DeviceProfile, list_profiles, load_profile, onnxruntime_limits,
                              profiles_dir)

EXPECTED = {"rpi4", "rpi5", "rpi-zero-2w", "jetson-nano", "jetson-orin-nano", "generic-aarch64",
            "generic-x86_64"}
SHIPPED = sorted(p.stem for p in profiles_dir().glob("*.yaml"))


@pytest.fixture
def rpi4_data() -> dict:
    return yaml.safe_load((profiles_dir() / "rpi4.yaml").read_text())


def write_profile(directory: Path, data: dict, stem: str | None = None) -> Path:
    path = directory / f"{stem or data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def profile_error(path) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    return info.value.message


# ------------------------------------------------------------------ shipped profiles

def test_the_expected_profiles_ship():
    assert EXPECTED <= set(SHIPPED)
    assert [p.name for p in list_profiles()] == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_round_trips(name, tmp_path):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.source_path == (profiles_dir() / f"{name}.yaml").resolve()
    assert profile.budgets.latency_ms > 0 and profile.budgets.ram_mb > 0
    assert profile.budgets.model_size_mb > 0
    assert profile.budgets.ram_mb <= profile.memory.usable_ram_mb <= profile.memory.ram_mb
    assert profile.notes, "every shipped profile explains its numbers"
    # to_dict() is schema-shaped: it validates and loads back to an equal profile.
    data = profile.to_dict()
    schema = json.loads((profiles_dir() / "schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    assert load_profile(write_profile(tmp_path, data)) == profile


def test_schema_is_valid_draft_2020_12_and_closed():
    schema = json.loads((profiles_dir() / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")

    def objects(node):
        if isinstance(node, dict):
            if "object" in (node.get("type") if isinstance(node.get("type"), list)
                            else [node.get("type")]):
                yield node
            for value in node.values():
                yield from objects(value)

    found = list(objects(schema))
    assert len(found) >= 9
    assert all(obj.get("additionalProperties") is False for obj in found)


def test_published_facts_the_toolchain_relies_on():
    rpi4, rpi5, nano, orin = (load_profile(n) for n in ("rpi4", "rpi5", "jetson-nano",
                                                         "jetson-orin-nano"))
    assert not rpi4.cpu.int8_dot_product and rpi5.cpu.int8_dot_product  # A72 vs A76
    assert orin.cpu.int8_dot_product and orin.cpu.cores == 6
    assert load_profile("rpi-zero-2w").memory.ram_mb == 512
    assert nano.gpu is not None and nano.gpu.cuda_cores == 128 and nano.os.python == "3.6"
    assert nano.tflite_runtime is None  # no LiteRT wheel for Python 3.6
    ort = nano.onnx_runtime
    assert (ort.version, ort.max_opset, ort.max_ir_version, ort.max_ml_opset) == ("1.11.0", 16, 8, 2)
    assert rpi4.onnx_runtime.max_opset == 21  # onnxruntime 1.20 rejects opset 22
    assert orin.onnx_runtime.max_ir_version == 9  # onnxruntime 1.17 takes IR <= 9
    assert onnxruntime_limits("1.20.1") == (21, 4, 10)
    assert onnxruntime_limits("9.99") is None


def test_device_caps_the_export_opset():
    from edgeops.convert import ConvertOptions

    nano = ConvertOptions(profile=load_profile("jetson-nano"))
    assert nano.target_opset(default=18) == 16
    assert (nano.max_ir_version, nano.max_ml_opset) == (8, 2)
    assert ConvertOptions(profile=load_profile("rpi4")).target_opset(default=17) == 17
    with pytest.raises(UsageError, match="opset <= 16"):
        ConvertOptions(opset=18, profile=load_profile("jetson-nano")).target_opset(default=17)


# ------------------------------------------------------------------ user profiles and errors

def test_user_profile_by_path(tmp_path, rpi4_data):
    rpi4_data.update(name="my-board", display_name="My board")
    rpi4_data["cpu"]["cores"] = 2
    rpi4_data["runtimes"]["litert"] = None
    path = write_profile(tmp_path, rpi4_data)
    for given in (str(path), path):
        profile = load_profile(given)
        assert (profile.name, profile.cpu.cores, profile.tflite_runtime) == ("my-board", 2, None)
        assert profile.source_path == path.resolve()
    yml = path.with_suffix(".yml")
    path.rename(yml)
    assert load_profile(str(yml)).name == "my-board"


def test_unknown_key_is_rejected_by_its_path(tmp_path, rpi4_data):
    rpi4_data["cpu"]["turbo"] = True
    rpi4_data["colour"] = "red"
    message = profile_error(write_profile(tmp_path, rpi4_data))
    assert message.startswith(f"{tmp_path / 'rpi4.yaml'}: ")
    assert "cpu.turbo: unknown key" in message and "colour: unknown key" in message


def test_wrong_type_names_file_and_key_path(tmp_path, rpi4_data):
    rpi4_data["cpu"]["cores"] = "four"
    assert "rpi4.yaml: cpu.cores: 'four' is not of type 'integer'" in profile_error(
        write_profile(tmp_path, rpi4_data))


def test_missing_key_and_unquoted_version(tmp_path, rpi4_data):
    del rpi4_data["runtimes"]["onnxruntime"]["max_opset"]
    assert "runtimes.onnxruntime.max_opset: missing required key" in profile_error(
        write_profile(tmp_path, rpi4_data))
    path = tmp_path / "rpi4.yaml"
    path.write_text((profiles_dir() / "rpi4.yaml").read_text().replace('python: "3.11"',
                                                                        "python: 3.10"))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert "os.python: 3.1 is not of type 'string'" in info.value.message
    assert "quote" in info.value.hint


def test_name_must_match_the_file_stem(tmp_path, rpi4_data):
    message = profile_error(write_profile(tmp_path, rpi4_data, stem="pi"))
    assert "pi.yaml: name: 'rpi4' does not match the file name 'pi'" in message


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ProfileError) as info:
        load_profile("rpi3")
    assert all(name in info.value.message for name in EXPECTED)
    assert info.value.exit_code == 2
    assert "rpi4" in info.value.hint or "rpi5" in info.value.hint  # did you mean


def test_missing_file_and_bad_yaml(tmp_path):
    assert "does not exist" in profile_error(tmp_path / "absent.yaml")
    (tmp_path / "dup.yaml").write_text("name: dup\nname: dup\n")
    assert "duplicate key 'name'" in profile_error(tmp_path / "dup.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert "expected a mapping" in profile_error(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("cpu: [unclosed\n")
    assert "broken.yaml: not valid YAML" in profile_error(tmp_path / "broken.yaml")


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["memory"].update(usable_ram_mb=5000), "memory.usable_ram_mb: 5000 is more than"),
    (lambda d: d["budgets"].update(ram_mb=4000), "budgets.ram_mb: 4000 is more than"),
    (lambda d: d["runtimes"]["onnxruntime"].update(max_opset=22),
     "runtimes.onnxruntime.max_opset: 22 is more than onnxruntime 1.20.1 implements (21)"),
    (lambda d: d["cpu"].update(int8_dot_product=True), "cpu.int8_dot_product: true disagrees"),
])
def test_rules_across_fields(tmp_path, rpi4_data, edit, expected):
    edit(rpi4_data)
    assert expected in profile_error(write_profile(tmp_path, rpi4_data))


def test_with_budgets_returns_a_validated_copy():
    rpi4 = load_profile("rpi4")
    tight = rpi4.with_budgets(latency_ms=20, model_size_mb=5.5)
    assert (tight.budgets.latency_ms, tight.budgets.ram_mb, tight.budgets.model_size_mb) == \
        (20, rpi4.budgets.ram_mb, 5.5)
    assert rpi4.budgets.latency_ms == 100 and tight.cpu == rpi4.cpu
    assert rpi4.with_budgets() == rpi4
    for bad in (0, -1, math.nan, math.inf, True, "10"):
        with pytest.raises(ProfileError, match="latency_ms must be a positive number"):
            rpi4.with_budgets(latency_ms=bad)


def test_profiles_are_frozen():
    profile = load_profile("rpi5")
    with pytest.raises(AttributeError):
        profile.name = "other"  # type: ignore[misc]
    assert isinstance(profile, DeviceProfile)


# ------------------------------------------------------------------ CLI

def invoke(*args: str):
    return CliRunner().invoke(devices_cli.group, list(args))


def test_cli_list_table_and_json():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in EXPECTED)  # the table is the result: stdout
    result = invoke("list", "--json")
    assert result.exit_code == 0
    assert {p["name"] for p in json.loads(result.stdout)} == set(SHIPPED)


def test_cli_show_name_path_and_json(tmp_path, rpi4_data):
    result = invoke("show", "jetson-nano")
    assert result.exit_code == 0
    assert "opset <= 16" in result.stdout and "Maxwell" in result.stdout
    rpi4_data["name"] = "mine"
    result = invoke("show", str(write_profile(tmp_path, rpi4_data)), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["name"] == "mine"


def test_cli_show_bad_profile_raises_profile_error(tmp_path, rpi4_data):
    rpi4_data["cpu"]["cores"] = "four"
    result = invoke("show", str(write_profile(tmp_path, rpi4_data)))
    assert isinstance(result.exception, ProfileError)
    assert "cpu.cores" in result.exception.message


def _cli_modules_present() -> bool:
    return all(importlib.util.find_spec(f"edgeops.cli.{m}") for m in ("convert", "quantize"))


# Through the real entry point's error mapping: the full `edgeops` command needs every
# command module; the fallback registers only `devices` on the same click group.
_ONLY_DEVICES = ("import edgeops.cli.main as m; from edgeops.cli import devices; "
                 "m._add_commands = lambda: m.cli.add_command(devices.group); m.main()")


@pytest.mark.parametrize("entry", [
    pytest.param(["-m", "edgeops.cli.main"], id="edgeops",
                 marks=pytest.mark.skipif(not _cli_modules_present(),
                                          reason="edgeops.cli.convert/quantize not written yet")),
    pytest.param(["-c", _ONLY_DEVICES], id="main-with-devices-only"),
])
def test_cli_subprocess_exit_codes(entry, tmp_path, rpi4_data):
    def run(*args):
        return subprocess.run([sys.executable, *entry, "devices", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)

    ok = run("list", "--json")
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)) == len(SHIPPED)
    rpi4_data["cpu"]["turbo"] = 1
    bad = run("show", str(write_profile(tmp_path, rpi4_data)))
    assert bad.returncode == 2
    assert "error:" in bad.stderr and "cpu.turbo: unknown key" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = run("show", "rpi3")
    assert unknown.returncode == 2 and "known profiles" in unknown.stderr
    assert "Traceback" not in unknown.stderr
