"""Memory under load. With a RAM budget of a few expert slots the store streams many times the budget from
the shards, while the process RSS grows by less than the budget plus OVERHEAD (the check is shown to catch a
store that keeps a copy of what it reads). A full KV cache queues requests up to `max_queue` and answers 429
beyond, and nothing ever runs past the context."""

from __future__ import annotations

import threading

import httpx
import pytest

from kimi_local.cache import store as store_module
from tests.reliability.memory import OVERHEAD, stream_from_disk
from tests.reliability.servers import Sizes, held_engine, load_cached, load_plain, serve

SLOTS = 3


@pytest.fixture
def budget_server(tiny_checkpoint):
    with serve(load_cached(tiny_checkpoint, Sizes(max_context=128, max_batch=4), SLOTS)) as running:
        yield running


def test_rss_stays_within_the_ram_budget_while_streaming(budget_server):
    budget = budget_server.store.snapshot()["ram_arena_bytes"]
    bound = budget + OVERHEAD
    read, growth, peak = stream_from_disk(budget_server, 3 * bound)
    assert read >= 3 * bound
    assert peak < bound, f"RSS grew {peak >> 20} MiB at peak (bound {bound >> 20} MiB) while reading {read >> 20} MiB"
    snap = budget_server.store.snapshot()
    assert snap["ram_resident_experts"] <= SLOTS and snap["evictions"] > 100


def test_the_rss_check_catches_a_store_that_keeps_what_it_reads(budget_server, monkeypatch):
    kept = []
    real_read = store_module.read_expert_steps

    def hoarding_read(plan, files, slot):
        n = yield from real_read(plan, files, slot)
        kept.append(bytearray(slot))  # a copy per read that is never freed
        return n

    monkeypatch.setattr(store_module, "read_expert_steps", hoarding_read)
    bound = budget_server.store.snapshot()["ram_arena_bytes"] + OVERHEAD
    _, _, peak = stream_from_disk(budget_server, 3 * bound // 2)
    assert peak > bound


def test_full_kv_cache_queues_then_refuses(tiny_checkpoint):
    """2 KV slots and a queue of 4, 10 requests at once (the engine held until all have been answered or
    queued): 4 queue and complete in full, 6 get 429 with Retry-After; nothing fails, nothing stays behind."""
    sizes = Sizes(max_context=128, max_batch=2, max_queue=4)
    with serve(load_plain(tiny_checkpoint, sizes), max_queue=sizes.max_queue) as running:
        engine = running.engine
        results: list[httpx.Response] = []

        def request(i: int) -> None:
            body = {"prompt": [5 + i], "max_tokens": 24, "ignore_eos": True}
            response = httpx.post(running.url + "/v1/completions", json=body, timeout=120)
            results.append(response)

        def all_placed() -> bool:
            return engine.num_waiting == sizes.max_queue and sum(r.status_code == 429 for r in results) == 6

        with held_engine(engine, all_placed):
            threads = [threading.Thread(target=request, args=(i,)) for i in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * 4 + [429] * 6, statuses
        for r in results:
            if r.status_code == 200:
                assert r.json()["usage"]["completion_tokens"] == 24
            else:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
        assert engine.num_running == 0 and engine.num_waiting == 0


def test_nothing_runs_past_the_context(server):
    max_context = server.engine.max_context
    url = server.url + "/v1/completions"
    full = httpx.post(url, json={"prompt": [7] * (max_context - 1), "max_tokens": 10**9}, timeout=60).json()
    assert full["usage"]["completion_tokens"] == 1 and full["choices"][0]["finish_reason"] == "length"
    over = httpx.post(url, json={"prompt": [7] * max_context}, timeout=60)
    assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded"
    long = httpx.post(url, json={"prompt": [7, 8], "max_tokens": 10**9, "ignore_eos": True}, timeout=60).json()
    assert long["usage"]["total_tokens"] == max_context
