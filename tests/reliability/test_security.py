"""Security: loopback by default, the API key on every route but /health, no request field that makes the
server open a file, and a checkpoint's chat template that cannot execute code."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from kimi_local.config import Config
from kimi_local.server.app import create_app
from kimi_local.server.runner import ServerThread
from kimi_local.server.state import ServerState
from kimi_local.text.chat import ChatFormat
from kimi_local.text.files import TEMPLATE_FILE
from tests.reliability.openapi_doc import operations
from tests.reliability.servers import Sizes, load_plain, serve

KEY = "k-3f9a1c"


# -- loopback -------------------------------------------------------------------------------------------------
def non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def test_serve_binds_loopback_by_default(tiny_checkpoint, tmp_path):
    """`kimi-local serve` with no --host and no config file: reachable on 127.0.0.1 and nowhere else."""
    assert Config().server.host == "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_LOCAL_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "kimi_local", "serve", "--model", str(tiny_checkpoint), "--port",
                             "0", "--expert-backend", "torch", "--max-context", "64"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        match = None
        deadline = time.monotonic() + 60
        while match is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "serve exited early"
            match = re.search(r"on http://([\d.]+):(\d+)", line)
        assert match, "serve did not report its address"
        host, port = match.group(1), int(match.group(2))
        assert host == "127.0.0.1"
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        outside = non_loopback_ipv4()
        if outside is not None:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{outside}:{port}/health", timeout=5)
    finally:
        proc.kill()
        proc.wait()


# -- API key --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(server):
    """A second app over the session server's engine service, with an API key."""
    s = server.state
    state = ServerState(s.service, s.tokenizer, s.chat_format, s.model_name, api_key=KEY, metrics=s.metrics)
    app = create_app(state)
    with ServerThread(app) as thread:
        yield thread.url, app


def every_route(app) -> list[tuple[str, str]]:
    """(METHOD, path) of every route the app declares, path parameters filled in."""
    return sorted((method.upper(), path.replace("{model_id}", "kimi-tiny"))
                  for path, method in operations(app.openapi()))


def test_every_route_but_health_needs_the_key(keyed):
    url, app = keyed
    routes = every_route(app)
    assert ("GET", "/health") in routes and len(routes) >= 8
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    wrong = [{}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY}x"},
             {"x-api-key": KEY[:-1]}]
    right = [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer  {KEY}"}, {"x-api-key": KEY}]
    with httpx.Client(base_url=url, timeout=60) as http:
        for method, path in routes:
            for headers in wrong:
                r = http.request(method, path, headers=headers, json=body if method == "POST" else None)
                if path == "/health":
                    assert r.status_code == 200
                    continue
                assert r.status_code == 401, (method, path, headers, r.status_code)
                error = r.json()["error"]
                assert "key" in error["message"].lower() and KEY not in r.text
                if path.startswith("/v1/messages"):
                    assert r.json()["type"] == "error" and error["type"] == "authentication_error"
            for headers in right:
                r = http.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert r.status_code == 200, (method, path, headers, r.text[:200])


# -- no request field opens a file --------------------------------------------------------------------------------
def canary_requests(canary: str) -> list[tuple[str, str, dict | None]]:
    uri = Path(canary).as_uri()
    schema = {"$ref": uri, "$schema": uri, "type": "object", "properties": {"p": {"$ref": canary}}}
    messages = [{"role": "system", "content": canary}, {"role": "user", "name": canary, "content": [
        {"type": "text", "text": canary}, {"type": "image_url", "image_url": {"url": uri}}]}]
    return [
        ("POST", "/v1/chat/completions", {"model": canary, "messages": messages, "max_tokens": 1}),
        ("POST", "/v1/chat/completions", {"model": uri, "user": canary, "stop": [canary], "max_tokens": 1,
                                          "messages": [{"role": "user", "content": canary}],
                                          "tools": [{"type": "function", "function": {"name": "f", "description": uri,
                                                                                        "parameters": schema}}],
                                          "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
                                          "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ("POST", "/v1/completions", {"model": canary, "prompt": canary, "suffix": canary, "max_tokens": 1}),
        ("POST", "/v1/completions", {"model": canary, "prompt": [canary, uri], "max_tokens": 1}),
        ("POST", "/v1/messages", {"model": canary, "max_tokens": 1, "system": canary, "metadata": {"user_id": canary},
                                  "messages": [{"role": "user", "content": [
                                      {"type": "image", "source": {"type": "url", "url": uri}},
                                      {"type": "document", "source": {"type": "file", "file_id": canary}}]}]}),
        ("POST", "/v1/messages", {"model": canary, "max_tokens": 1, "container": canary,
                                  "tools": [{"name": "f", "input_schema": schema}],
                                  "messages": [{"role": "user", "content": canary}]}),
        ("POST", "/v1/messages/count_tokens", {"model": uri, "messages": [{"role": "user", "content": uri}]}),
        ("GET", f"/v1/models/{canary}", None),
        ("GET", "/v1/models/..%2f..%2f..%2f" + canary.lstrip("/").replace("/", "%2f"), None),
        ("GET", f"/metrics?experts={canary}", None),
    ]


def test_no_request_field_makes_the_server_open_a_file(server, tmp_path):
    canary = tmp_path / "canary-secret.txt"
    canary.write_text("secret")
    opened: list[str] = []
    active = [True]

    def audit(event: str, args: tuple) -> None:
        if active[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed: this one goes quiet when the test ends
    try:
        with open(tmp_path / "control.txt", "w"):  # the hook sees opens (a test that cannot fail is no test)
            pass
        with httpx.Client(base_url=server.url, timeout=60) as http:
            statuses = [http.request(method, path, json=body).status_code
                        for method, path, body in canary_requests(str(canary))]
    finally:
        active[0] = False
    assert any(p.endswith("control.txt") for p in opened)
    assert not [p for p in opened if "canary-secret" in p], opened
    assert all(s < 500 for s in statuses), statuses
    assert canary.read_text() == "secret"


# -- the chat template sandbox ------------------------------------------------------------------------------
def hostile_templates(marker: Path) -> list[str]:
    templates = [
        "{{ cycler.__init__.__globals__.os.system('touch MARK') }}",
        "{{ joiner.__init__.__globals__.os.system('touch MARK') }}",
        "{{ namespace.__init__.__globals__.os.popen('touch MARK').read() }}",
        "{{ lipsum.__globals__['os'].system('touch MARK') }}",
        "{{ raise_exception.__globals__['os'].system('touch MARK') }}",
        "{{ self.__init__.__globals__.__builtins__.open('MARK', 'w').write('x') }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{% for c in ().__class__.__bases__[0].__subclasses__() %}{{ c('touch MARK', shell=True) }}{% endfor %}",
        "{{ '{0.__class__.__mro__}'.format(messages) }}",
        "{% set _ = messages.append({'role': 'system', 'content': 'x'}) %}{{ messages }}",
        "{% set _ = (messages|first).update({'role': 'system'}) %}{{ messages }}",
        "{% include '/etc/passwd' %}",
        "{% import 'os' as os %}{{ os.system('touch MARK') }}",
    ]
    return [t.replace("MARK", str(marker)) for t in templates]


def test_hostile_templates_cannot_execute_code(tiny_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    from kimi_local.text.tokenizer import KimiTokenizer

    tokenizer = KimiTokenizer.from_dir(tiny_checkpoint)
    messages = [{"role": "user", "content": "hi"}]
    for template in hostile_templates(marker):
        chat = ChatFormat(tokenizer, template, "hostile.jinja")
        with pytest.raises(Exception) as info:
            chat.encode_messages(messages)
        assert "unsafe" in str(info.value) or "loader" in str(info.value), (template, info.value)
        assert messages == [{"role": "user", "content": "hi"}]  # the caller's data is untouched
    assert not marker.exists()


def test_server_with_a_hostile_template_refuses_and_keeps_serving(tiny_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    (path / TEMPLATE_FILE).write_text(hostile_templates(marker)[0])
    with serve(load_plain(path, Sizes())) as running:
        chat = httpx.post(running.url + "/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert 400 <= chat.status_code < 600 and "unsafe" in chat.json()["error"]["message"]
        raw = httpx.post(running.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1}, timeout=60)
        assert raw.status_code == 200  # no template involved
        assert httpx.get(running.url + "/health", timeout=10).status_code == 200
    assert not marker.exists()
