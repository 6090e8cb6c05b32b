"""`kimi-local serve` as a user runs it: a real process on a free port, stopped with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from kimi_local.cli import main


def serve_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_LOCAL_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no developer kimi-local.toml
    return env


def start(args: list[str], tmp_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kimi_local", "serve", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=serve_env(tmp_path))


def served_url(proc: subprocess.Popen, host: str = "127.0.0.1") -> str:
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "serve exited early"
        match = re.search(rf"serving 'tiny' on (http://{re.escape(host)}:\d+)", line)
        url = match.group(1) if match else None
    assert url, "serve did not report its address"
    return url


def test_serve_answers_and_stops_on_ctrl_c(tiny_checkpoint, tmp_path):
    proc = start(["--model", str(tiny_checkpoint), "--port", "0", "--api-key", "k", "--expert-backend", "torch",
                  "--max-context", "128", "--model-name", "tiny"], tmp_path)
    try:
        url = served_url(proc)
        assert httpx.get(url + "/health").json()["model"] == "tiny"
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 128
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130  # uvicorn shuts down gracefully, then re-raises the interrupt
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_answers_to_its_bound_address_and_loopback_only(tiny_checkpoint, tmp_path):
    """The Host check knows the --host it was given: a web page's DNS rebinding name is refused."""
    proc = start(["--model", str(tiny_checkpoint), "--host", "127.0.0.2", "--port", "0", "--expert-backend", "torch",
                  "--max-context", "128", "--model-name", "tiny"], tmp_path)
    try:
        url = served_url(proc, "127.0.0.2")
        assert httpx.get(url + "/health").status_code == 200  # Host: 127.0.0.2:PORT
        assert httpx.get(url + "/health", headers={"Host": "localhost"}).status_code == 200
        refused = httpx.get(url + "/health", headers={"Host": "attacker.example:8000"})
        assert refused.status_code == 400 and "attacker.example" in refused.json()["error"]["message"]
    finally:
        proc.kill()
        proc.wait()


def test_busy_port_is_one_clear_error(tiny_checkpoint, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = start(["--model", str(tiny_checkpoint), "--port", str(port)], tmp_path)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize("flag, value", [("--port", "70000"), ("--max-queue", "0")])
def test_bad_flags_are_refused(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(["serve", flag, value])
    assert info.value.code == 2 and flag in capsys.readouterr().err
