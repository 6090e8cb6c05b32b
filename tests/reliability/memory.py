"""Memory under load with a RAM budget: stream many times the budget from disk and watch the process RSS."""

from __future__ import annotations

import threading

import httpx
import psutil

from tests.reliability.soak import RssSampler

OVERHEAD = 24 << 20  # what serving itself may add under load (request objects, buffers, allocator slack)


def stream_from_disk(running, target_bytes: int, clients: int = 4) -> tuple[int, int, int]:
    """Load until the store has read `target_bytes`; returns (bytes read, RSS growth at the end, peak growth)."""
    store = running.store
    httpx.post(running.url + "/v1/completions", json={"prompt": [5], "max_tokens": 16}, timeout=60).raise_for_status()

    def client(i: int) -> None:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            while store.snapshot()["bytes_read"] < start_bytes + target_bytes:
                body = {"prompt": [5 + i, 9], "max_tokens": 100, "ignore_eos": True}
                http.post("/v1/completions", json=body).raise_for_status()

    with RssSampler(psutil.Process().pid, interval=0.05) as rss:
        start_rss, start_bytes = rss.rss(), store.snapshot()["bytes_read"]
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end_rss = rss.rss()
    return store.snapshot()["bytes_read"] - start_bytes, end_rss - start_rss, rss.peak - start_rss
