"""Telemetry probes, the expert-cache statistics reader, and the panel's formatting."""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import pytest

from kimi_local.tui.reply_meter import ReplyMeter
from kimi_local.tui.telemetry import CacheTelemetry, Telemetry, gpu_probe, memory_probe, read_cache_stats
from kimi_local.tui.units import fmt_bytes, fmt_count_of, fmt_rate, fmt_seconds, fmt_share
from kimi_local.tui.widgets.telemetry_panel import telemetry_values


def test_memory_probe_agrees_with_psutil():
    rss, free = memory_probe()
    assert abs(rss - psutil.Process().memory_info().rss) < 64 * 2**20
    assert abs(free - psutil.virtual_memory().available) < 512 * 2**20


def test_gpu_probe_matches_torch():
    import torch

    has_gpu, used, total = gpu_probe()
    assert has_gpu == torch.cuda.is_available()
    if not has_gpu:
        assert used is None and total is None
    else:
        assert 0 <= used <= total


@dataclass
class StoreStats:
    hits: int
    misses: int
    ram_resident_bytes: int
    gpu_resident_bytes: int


class Backend:
    def __init__(self, stats):
        self._stats = stats

    def stats(self):
        return self._stats


class WithStore:
    def __init__(self, stats):
        self.store = Backend(stats)


def test_cache_stats_from_a_dataclass_a_mapping_or_a_store():
    got = read_cache_stats(Backend(StoreStats(hits=30, misses=10, ram_resident_bytes=5, gpu_resident_bytes=7)))
    assert got == CacheTelemetry(hit_rate=0.75, ram_bytes=5, gpu_bytes=7)
    nested = {"hit_rate": 0.5, "ram": {"resident_bytes": 11, "budget_bytes": 20}, "gpu": {"resident_bytes": 0}}
    assert read_cache_stats(WithStore(nested)) == CacheTelemetry(0.5, 11, 0, 20, None)
    assert read_cache_stats(object()) is None  # no cache: n/a
    assert read_cache_stats(Backend({"hits": 0, "misses": 0})) == CacheTelemetry()  # nothing looked up yet


def test_cache_stats_of_the_real_expert_store(tiny_checkpoint):
    """The expert store (kimi_local/cache) behind the model, at a budget that forces misses."""
    from kimi_local.cache.backend import CachedExperts
    from kimi_local.cache.reader import expert_slot_bytes
    from kimi_local.cache.store import ExpertStore
    from kimi_local.engine.engine import Engine
    from kimi_local.engine.sampling import SamplingParams
    from kimi_local.model.checkpoint import Checkpoint
    from kimi_local.model.deepseek import KimiModel

    ckpt = Checkpoint.open(tiny_checkpoint)
    store = ExpertStore(ckpt, ram_budget_bytes=12 * expert_slot_bytes(ckpt), use_direct_io=False)
    experts = CachedExperts(store)
    engine = Engine(KimiModel.from_checkpoint(ckpt, experts), max_context=64)
    list(engine.generate([3, 1, 4, 1, 5], SamplingParams(temperature=0, max_new_tokens=4)))
    snap = store.snapshot()
    got = read_cache_stats(experts)
    assert snap["misses"] > 0 and got.hit_rate == pytest.approx(snap["hit_rate"]) and 0 < got.hit_rate < 1
    assert got.ram_bytes == snap["ram_resident_bytes"] > 0
    assert got.ram_budget_bytes == snap["ram_budget_bytes"]
    assert got.gpu_bytes == snap["gpu_bytes"] == 0


def test_a_failing_stats_method_is_not_fatal():
    class Broken:
        def stats(self):
            raise RuntimeError("boom")

    assert read_cache_stats(Broken()) is None


def test_units():
    assert fmt_bytes(None) == "n/a" and fmt_bytes(512) == "512 B" and fmt_bytes(3 * 2**30) == "3.0 GiB"
    assert fmt_bytes(1.5 * 2**40) == "1.5 TiB"
    assert fmt_rate(12.345) == "12.3 tok/s" and fmt_rate(1234.4) == "1234 tok/s" and fmt_rate(None) == "n/a"
    assert fmt_seconds(0.0421) == "42 ms" and fmt_seconds(2.5) == "2.50 s"
    assert fmt_share(0.875) == "87.5%" and fmt_count_of(10, 512) == "10 / 512" and fmt_count_of(None, 5) == "n/a"


def test_panel_values():
    empty = telemetry_values(None, None)
    assert set(empty.values()) == {"n/a"}
    meter = ReplyMeter()
    t = Telemetry(process_rss_bytes=2**30, free_ram_bytes=2 * 2**30, has_gpu=False, max_context=4096,
                  cache=CacheTelemetry(hit_rate=0.5, ram_bytes=2**20))
    values = telemetry_values(t, meter)
    assert values["process RSS"] == "1.0 GiB" and values["free RAM"] == "2.0 GiB"
    assert values["GPU memory"] == "no GPU" and values["hit rate"] == "50.0%" and values["RAM tier"] == "1.0 MiB"
    assert values["GPU tier"] == "n/a" and values["context"] == "n/a" and values["prefetch recall"] == "n/a"
    gpu = telemetry_values(Telemetry(has_gpu=True, gpu_used_bytes=2**30, gpu_total_bytes=4 * 2**30), None)
    assert gpu["GPU memory"] == "1.0 GiB / 4.0 GiB"
