"""Hand-written hostile requests (see `hostile.py`): each gets its expected status, never a 5xx, refusals in
the route's error shape naming the problem; afterwards the server is healthy and idle."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.hostile import Case, cases, send


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_hostile_request(client, case: Case):
    outcome = send(client, case)
    assert outcome.survived, f"{case.name}: " + "; ".join(outcome.problems)


def test_server_is_healthy_and_idle_afterwards(client, server):
    deadline = time.monotonic() + 30
    while True:
        health = client.get("/health").json()
        if health["running"] == 0 and health["waiting"] == 0:
            break
        assert time.monotonic() < deadline, f"requests left behind: {health}"
        time.sleep(0.05)
    assert server.engine.num_running == 0 and len(server.engine._free_slots) == server.engine.max_batch
    reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
