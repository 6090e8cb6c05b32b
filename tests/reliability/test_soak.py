"""A short soak in the default suite: 16 clients for a few seconds mixing streaming, non-streaming, cancelled
and oversized requests on the real engine. No errors of any kind; every cancelled request aborted and its KV
slot freed; the process RSS grows by less than RSS_GROWTH_BOUND over the soak (after a warm-up).
`benchmarks/reliability.py --soak-seconds 600` is the long version."""

from __future__ import annotations

import pytest

from tests.reliability.soak import run_soak

SECONDS = 4.0
CLIENTS = 16
RSS_GROWTH_BOUND = 64 << 20


def test_short_soak(server, monkeypatch):
    engine = server.engine
    aborts = []
    real_abort = engine.abort
    monkeypatch.setattr(engine, "abort", lambda request_id: (aborts.append(request_id), real_abort(request_id)))
    report = run_soak(server.url, SECONDS, clients=CLIENTS, seed=1, max_context=engine.max_context)
    print(report.summary())
    assert report.num_errors == 0, report.summary()
    assert report.served >= CLIENTS, report.summary()
    assert report.requests["oversized"] == 0 or report.refused >= 1
    assert report.requests["cancelled"] == 0 or aborts, "walking away from a stream must abort its request"
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert sorted(engine._free_slots) == list(range(engine.max_batch)), "a KV slot leaked"
    assert report.rss_end - report.rss_start < RSS_GROWTH_BOUND, report.summary()
    assert report.percentile(50) <= report.percentile(99)


@pytest.mark.slow
def test_soak_one_minute(server):
    report = run_soak(server.url, 60.0, clients=CLIENTS, seed=2, max_context=server.engine.max_context)
    print(report.summary())
    assert report.num_errors == 0 and report.rss_end - report.rss_start < RSS_GROWTH_BOUND, report.summary()
