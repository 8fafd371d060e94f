"""The agent stays light (no framework imports), and its settings merge CLI > env > file > defaults."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent_testlib import mlp_bundle, wait_for

from edgeops.agent import AgentConfig, load_config
from edgeops.agent.config import OPTIONS, env_name, sanitize_device_id
from edgeops.errors import InputFileError, UsageError

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorflow", "sklearn", "skl2onnx", "click", "rich", "yaml", "jsonschema", "onnx", "scipy",
         "pandas", "matplotlib", "keras", "cryptography")

LIGHT_CHECK = """
import json, sys, http.client
import edgeops.agent
from edgeops.agent import Agent, AgentConfig, load_config
import edgeops.agent.cli, edgeops.agent.service, edgeops.agent.app, edgeops.agent.server, edgeops.agent.metrics
import edgeops.agent.model, edgeops.agent.validation, edgeops.agent.telemetry, edgeops.agent.system
import edgeops.agent.outbox, edgeops.agent.mqtt
config = load_config({"bundle": sys.argv[1], "port": 0, "buffer_dir": sys.argv[2], "broker": "mqtt://127.0.0.1:1",
                      "flush_timeout": 0}, env={})
agent = Agent(config, log=lambda line: None)
agent.start()
host, port = agent.url.split("//")[1].rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port))
conn.request("POST", "/v1/predict", json.dumps({"inputs": [[1, 2, 3, 4]]}), {"Content-Type": "application/json"})
response = conn.getresponse()
assert response.status == 200, response.read()
agent.close_window()
agent.stop()
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[3].split(",")))
print("HEAVY=" + ",".join(heavy))
"""


def test_the_agent_imports_no_framework(tmp_path):
    """In a fresh interpreter: import every agent module, serve a prediction, write a telemetry window."""
    bundle = mlp_bundle(tmp_path / "b")
    proc = subprocess.run([sys.executable, "-c", LIGHT_CHECK, str(bundle), str(tmp_path / "buf"), ",".join(HEAVY)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY=\n" in proc.stdout, proc.stdout  # nothing heavy was imported
    # and the check can fail: importing the toolchain side does load a listed module
    proc = subprocess.run([sys.executable, "-c", "import sys, edgeops.cli.main; print(sorted({'click'} & set(sys.modules)))"],
                          capture_output=True, text=True, timeout=60)
    assert "['click']" in proc.stdout


def test_precedence_cli_env_file_defaults(tmp_path):
    conf = tmp_path / "agent.toml"
    conf.write_text('bundle = "/srv/m.edgepkg"\nport = 1111\ntelemetry_interval = 5\nrange_check = "warn"\n'
                    'broker = "mqtt://file-host"\nrequire_signature = false\n')
    env = {env_name("port"): "2222", env_name("broker"): "mqtt://env-host:1884", env_name("token"): "from-env",
           "STATE_DIRECTORY": str(tmp_path / "state") + ":/other"}
    c = load_config({"port": "3333", "device_id": None}, env=env, config_file=conf)
    assert (c.port, c.broker, c.telemetry_interval, c.range_check, c.token) == (3333, "mqtt://env-host:1884", 5.0,
                                                                                  "warn", "from-env")
    assert c.buffer_dir == str(tmp_path / "state")  # systemd's StateDirectory=, first entry
    c = load_config({}, env=env, config_file=conf)
    assert c.port == 2222
    c = load_config({}, env={env_name("config"): str(conf)})
    assert (c.port, c.broker, c.bundle) == (1111, "mqtt://file-host", "/srv/m.edgepkg")
    c = load_config({"bundle": "x.edgepkg"}, env={"HOME": str(tmp_path)})
    assert isinstance(c, AgentConfig)
    assert (c.port, c.host, c.telemetry_interval, c.max_body_bytes, c.range_check) == (8080, "127.0.0.1", 60.0,
                                                                                        1 << 20, "reject")
    assert c.broker is None and c.token is None and c.split == 0.0
    c = load_config({"bundle": "x", "candidate": "y"}, env={})
    assert c.split == 0.1  # the documented default share
    c = load_config({"bundle": "x", "require_signature": True, "trusted_key": "k.pub"},
                    env={env_name("require_signature"): "false"})
    assert c.require_signature is True
    c = load_config({"bundle": "x", "trusted_key": "k.pub"}, env={env_name("require_signature"): "yes"})
    assert c.require_signature is True


def test_config_errors_name_the_key(tmp_path):
    conf = tmp_path / "agent.toml"
    conf.write_text('bundle = "m.edgepkg"\ntelemetry_intervall = 5\n')
    with pytest.raises(UsageError, match="unknown key 'telemetry_intervall'"):
        load_config({}, env={}, config_file=conf)
    conf.write_text('port = "eighty"\n')
    with pytest.raises(UsageError, match="'port' in .*expected an integer"):
        load_config({"bundle": "x"}, env={}, config_file=conf)
    conf.write_text("port = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config({"bundle": "x"}, env={}, config_file=conf)
    with pytest.raises(InputFileError, match="cannot read the config file"):
        load_config({"bundle": "x"}, env={}, config_file=tmp_path / "none.toml")
    with pytest.raises(UsageError, match="EDGEOPS_AGENT_SPLIT.*expected a number"):
        load_config({"bundle": "x", "candidate": "c"}, env={env_name("split"): "ten percent"})
    with pytest.raises(UsageError, match="--split needs --candidate"):
        load_config({"bundle": "x", "split": "0.5"}, env={})
    with pytest.raises(UsageError, match="outside"):
        load_config({"bundle": "x", "candidate": "c", "split": "1.5"}, env={})
    with pytest.raises(UsageError, match="no bundle"):
        load_config({}, env={})
    with pytest.raises(UsageError, match="device id"):
        load_config({"bundle": "x", "device_id": "a/b"}, env={})
    with pytest.raises(UsageError, match="is not one of"):
        load_config({"bundle": "x", "range_check": "maybe"}, env={})
    token = tmp_path / "token"
    token.write_text("  abc123\n")
    assert load_config({"bundle": "x", "token_file": str(token)}, env={}).token == "abc123"
    with pytest.raises(UsageError, match="both a token and a token file"):
        load_config({"bundle": "x", "token_file": str(token)}, env={env_name("token"): "t"})


def test_device_id_defaults_to_the_sanitized_host_name():
    assert sanitize_device_id("pi kitchen/01.local") == "pi-kitchen-01.local"
    assert sanitize_device_id("") == "device" and len(sanitize_device_id("x" * 100)) == 64
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", load_config({"bundle": "x"}, env={}).device_id)


def test_cli_errors_are_one_line_with_exit_codes(tmp_path):
    conf = tmp_path / "agent.toml"
    conf.write_text("colour = 'blue'\n")
    run = [sys.executable, "-m", "edgeops.agent", "run"]
    proc = subprocess.run(run + ["m.edgepkg", "--config", str(conf)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: unknown key 'colour'") and "\nhint: known settings:" in proc.stderr
    proc = subprocess.run(run + ["--port", "x"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(run + ["--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0
    for option in OPTIONS:
        if option.name != "bundle":
            assert "--" + option.name.replace("_", "-") in proc.stdout


def test_sigterm_stops_cleanly_with_exit_0(tmp_path):
    bundle = mlp_bundle(tmp_path / "b")
    proc = subprocess.Popen([sys.executable, "-m", "edgeops.agent", "run", str(bundle), "--port", "0",
                             "--buffer-dir", str(tmp_path / "buf")], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        lines = []
        wait_for(lambda: lines.append(proc.stderr.readline()) or "listening on" in lines[-1], timeout=60)
        assert any("telemetry is off" in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0 and "stopping (SIGTERM)" in out and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_docs_cover_every_option_and_the_service_setup():
    text = (ROOT / "docs" / "agent.md").read_text()
    for option in OPTIONS:
        if option.name != "bundle":
            assert "--" + option.name.replace("_", "-") in text, option.name
        assert env_name(option.name) in text, option.name
    for needle in ("[Service]", "EnvironmentFile=", "ExecStart=", "StateDirectory=", "pip install 'edgeops[agent]'",
                   "edgeops[agent-tflite]", "/v1/predict", "/v1/feedback", "/healthz", "/metrics"):
        assert needle in text, needle


def test_tls_broker_settings_reach_the_publisher_without_leaking_the_password(tmp_path):
    from agent_testlib import Client, running_agent

    bundle = mlp_bundle(tmp_path / "b")
    with running_agent(bundle, tmp_path, broker="mqtts://edge:pa55word@127.0.0.1:1", flush_timeout=0) as agent:
        client = Client(agent.url)
        status, health, _ = client.request("GET", "/healthz")
        telemetry = health["telemetry"]
        assert status == 200 and telemetry["enabled"] is True and telemetry["connected"] is False
        assert telemetry["broker"] == "mqtts://edge@127.0.0.1:1"
        assert agent.publisher.broker.tls and agent.publisher.broker.password == "pa55word"
        text = client.request("GET", "/metrics")[1].decode()
        assert "edgeops_agent_mqtt_connected 0" in text and "edgeops_agent_outbox_pending 0" in text
        assert "pa55word" not in " ".join(agent.lines)
