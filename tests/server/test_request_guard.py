"""What a web page cannot do to a server on this machine: reach it through another host name (DNS rebinding)
or POST to it cross-site without a CORS preflight (a `text/plain` or form body). Refusals come in the route's
protocol and name the problem; the official clients are unaffected (the other server tests use them)."""

from __future__ import annotations

import httpx
import pytest

from kimi_local.server.app import create_app
from kimi_local.server.runner import ServerThread

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 2}
MESSAGES = {**CHAT, "max_tokens": 2}
JSON_BODY = httpx.Request("POST", "http://x", json=CHAT).content


def post(url: str, path: str, content_type: str | None, host: str | None = None, body: bytes = JSON_BODY):
    headers = {} if content_type is None else {"Content-Type": content_type}
    if host is not None:
        headers["Host"] = host
    return httpx.post(url + path, content=body, headers=headers, timeout=30)


def test_the_reviewers_rebinding_repro_is_refused(scripted_server):
    r = httpx.post(scripted_server.url + "/v1/chat/completions", content=JSON_BODY, timeout=30, headers={
        "Host": "attacker.example:8000", "Content-Type": "text/plain", "Origin": "http://attacker.example:8000"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "attacker.example" in error["message"]
    assert error["code"] == "invalid_host"


@pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/models", "/nowhere"])
def test_every_route_checks_the_host(scripted_server, path):
    r = httpx.get(scripted_server.url + path, headers={"Host": "rebound.example"})
    assert r.status_code == 400 and "rebound.example" in r.json()["error"]["message"]


def test_anthropic_routes_refuse_in_anthropic_shape(scripted_server):
    r = post(scripted_server.url, "/v1/messages", "application/json", host="attacker.example")
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = post(scripted_server.url, "/v1/messages", "text/plain")
    assert r.status_code == 415 and r.json()["type"] == "error" and "application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "127.0.0.1:8000", "[::1]", "[::1]:80"])
def test_loopback_names_are_allowed(scripted_server, host):
    assert httpx.get(scripted_server.url + "/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx",
                                          "application/json; charset=latin-1"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/messages/count_tokens"])
def test_post_bodies_must_be_json(scripted_server, path, content_type):
    r = post(scripted_server.url, path, content_type)
    assert r.status_code == 415
    message = r.json()["error"]["message"]
    assert "application/json" in message and (content_type or "no Content-Type").split(";")[0] in message


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_json_with_or_without_charset_is_served(scripted_server, content_type):
    r = post(scripted_server.url, "/v1/chat/completions", content_type)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_a_wildcard_bind_accepts_any_host_but_still_wants_json(scripted_server):
    """Bound to 0.0.0.0 or ::, the operator chose to be reached by any name; the JSON rule still holds."""
    for wildcard in ("0.0.0.0", "::"):
        with ServerThread(create_app(scripted_server.state, host=wildcard)) as thread:
            assert httpx.get(thread.url + "/health", headers={"Host": "gpu-box.lan:8000"}).status_code == 200
            assert post(thread.url, "/v1/chat/completions", "application/json", host="gpu-box.lan").status_code == 200
            assert post(thread.url, "/v1/chat/completions", "text/plain", host="gpu-box.lan").status_code == 415


def test_a_configured_address_is_one_of_the_names(scripted_server):
    with ServerThread(create_app(scripted_server.state, host="192.168.7.9")) as thread:
        assert httpx.get(thread.url + "/health", headers={"Host": "192.168.7.9:8000"}).status_code == 200
        assert httpx.get(thread.url + "/health").status_code == 200  # loopback still works
        assert httpx.get(thread.url + "/health", headers={"Host": "192.168.7.10:8000"}).status_code == 400
