"""Prometheus metrics: the text format, the engine figures, routing statistics, and an expert-cache snapshot
read from whatever the expert backend exposes (a fake here; the real store is another component)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import torch

from kimi_local.engine.routing_stats import RoutingStats
from kimi_local.engine.service import ServiceStats
from kimi_local.server.metrics import ServerMetrics, numeric_fields
from kimi_local.server.runner import expert_cache_snapshot

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by family; checks HELP/TYPE precede each family and families are not interleaved."""
    families: dict[str, list] = {}
    typed: set[str] = set()
    current = None
    for line in text.strip().splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("gauge", "counter") and name not in typed
            typed.add(name)
            current = name
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert name == current, f"{name} outside its family block"
        label_map = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
        families.setdefault(name, []).append((label_map, float(value)))
    return families


def stats(**overrides) -> ServiceStats:
    values = dict(running=2, waiting=3, generated_tokens=100, prompt_tokens=40, cached_prompt_tokens=25,
                  decode_tokens_per_second=12.5,
                  prefill_tokens_per_second=300.0, finished_requests=7, failed_requests=1)
    return ServiceStats(**{**values, **overrides})


@dataclass
class FakeCacheSnapshot:
    hits: int
    misses: int
    resident_bytes: int
    capacity_bytes: int
    name: str = "ram"


def test_engine_figures():
    families = parse(ServerMetrics().render(stats(), max_queue=64, max_batch=4))
    value = {name: samples[0][1] for name, samples in families.items() if len(samples) == 1}
    assert value["kimi_decode_tokens_per_second"] == 12.5
    assert value["kimi_queue_depth"] == 3 and value["kimi_queue_capacity"] == 64
    assert value["kimi_requests_running"] == 2 and value["kimi_kv_slots"] == 4
    assert value["kimi_generated_tokens_total"] == 100 and value["kimi_requests_failed_total"] == 1
    assert value["kimi_prompt_tokens_total"] == 40 and value["kimi_prompt_tokens_cached_total"] == 25
    assert "kimi_expert_cache_hit_rate" not in families and "kimi_routing_entropy_bits" not in families


def test_expert_cache_snapshot_from_a_dataclass_and_a_mapping():
    metrics = ServerMetrics(expert_cache=lambda: FakeCacheSnapshot(hits=30, misses=10, resident_bytes=1 << 30,
                                                                   capacity_bytes=2 << 30))
    families = parse(metrics.render(stats(), 64, 4))
    assert families["kimi_expert_cache_hit_rate"] == [({}, 0.75)]
    assert families["kimi_expert_cache_resident_bytes"] == [({}, float(1 << 30))]
    assert "kimi_expert_cache_name" not in families  # strings are not metrics
    tiered = ServerMetrics(expert_cache=lambda: {"hit_rate": 0.5, "ram": {"hits": 3, "misses": 1},
                                                 "gpu": {"resident_bytes": 10}})
    families = parse(tiered.render(stats(), 64, 4))
    assert families["kimi_expert_cache_hit_rate"] == [({}, 0.5), ({"tier": "ram"}, 0.75)]
    assert families["kimi_expert_cache_resident_bytes"] == [({"tier": "gpu"}, 10.0)]


def test_a_failing_cache_snapshot_does_not_break_the_scrape():
    def broken():
        raise RuntimeError("store is reloading")

    families = parse(ServerMetrics(expert_cache=broken).render(stats(), 64, 4))
    assert "kimi_queue_depth" in families and not any(n.startswith("kimi_expert_cache") for n in families)


def test_memory_gauges():
    families = parse(ServerMetrics().render(stats(), 64, 4))
    assert families["process_resident_memory_bytes"][0][1] > 10 * 2**20
    assert families["kimi_memory_available_bytes"][0][1] > 0


def test_the_cache_snapshot_is_found_on_the_backend_or_its_store():
    class Store:
        def stats(self):
            return {"hits": 1, "misses": 1}

    class WithStore:
        store = Store()

    class Own:
        def snapshot(self):
            return {"hit_rate": 0.9}

    assert expert_cache_snapshot(WithStore())() == {"hits": 1, "misses": 1}
    assert expert_cache_snapshot(Own())() == {"hit_rate": 0.9}
    assert expert_cache_snapshot(object()) is None


def test_numeric_fields_of_plain_objects():
    class Snap:
        def __init__(self):
            self.hits, self.misses, self.label = 1, 3, "x"

        @property
        def hit_rate(self):
            return self.hits / (self.hits + self.misses)

    assert numeric_fields(Snap()) == {"hits": 1, "misses": 3, "hit_rate": 0.25}
    assert numeric_fields(None) == {}


def test_routing_entropy_and_load_per_layer():
    routing = RoutingStats(num_layers=3, num_experts=4, moe_layer_ids=[1, 2])
    routing(1, torch.tensor([[0, 1], [2, 3]]))  # perfectly spread: 2 bits
    routing(2, torch.tensor([[0, 1], [0, 1]]))  # two experts: 1 bit
    families = parse(ServerMetrics(routing=routing).render(stats(), 64, 4, per_expert=True))
    entropy = {labels["layer"]: v for labels, v in families["kimi_routing_entropy_bits"]}
    assert entropy == pytest.approx({"1": 2.0, "2": 1.0})
    max_share = {labels["layer"]: v for labels, v in families["kimi_expert_load_max_share"]}
    assert max_share == pytest.approx({"1": 0.25, "2": 0.5})
    shares = families["kimi_expert_load_share"]
    assert len(shares) == 2 * 4
    layer2 = [v for labels, v in shares if labels["layer"] == "2"]
    assert np.allclose(layer2, [0.5, 0.5, 0.0, 0.0])
    assert families["kimi_routed_tokens_total"] == [({}, 2.0)]


def test_label_values_are_escaped():
    metrics = ServerMetrics()
    metrics.count_request('/v1/"odd"\\path', 200)
    text = metrics.render(stats(), 64, 4)
    assert 'endpoint="/v1/\\"odd\\"\\\\path"' in text
    parse(text)


def test_metrics_endpoint_on_the_real_server(real_server):
    httpx.post(real_server.url + "/v1/chat/completions",
               json={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    httpx.get(real_server.url + "/v1/no-such-thing")
    r = httpx.get(real_server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = parse(r.text)
    assert families["kimi_generated_tokens_total"][0][1] >= 3
    layers = {labels["layer"] for labels, _ in families["kimi_routing_entropy_bits"]}
    assert layers == {str(i) for i in real_server.engine.config.moe_layer_ids}
    requests = {(labels["endpoint"], labels["status"]) for labels, _ in families["kimi_http_requests_total"]}
    assert ("/v1/chat/completions", "200") in requests and ("other", "404") in requests
    assert "kimi_expert_load_share" not in families
    detailed = parse(httpx.get(real_server.url + "/metrics?experts=1").text)
    assert len(detailed["kimi_expert_load_share"]) == len(layers) * real_server.engine.config.n_routed_experts


def test_health(real_server):
    body = httpx.get(real_server.url + "/health").json()
    assert body["status"] == "ok" and body["model"] == "kimi-tiny" and body["max_context"] == 512
