"""Footprint figures against independent sources: the published Kimi-K2 inventory, the model's own parameter
count, the bytes a written checkpoint really holds, and the decode estimate's arithmetic."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from kimi_local.footprint import KERNEL_EFFICIENCY, estimate_decode, footprint
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.config import ModelConfig
from kimi_local.model.deepseek import KVCache, param_counts
from kimi_local.model.presets import KIMI_K2_CONFIG, PRESETS
from kimi_local.model.writer import write_checkpoint

torch.set_num_threads(1)


def test_kimi_k2_matches_the_published_inventory():
    """KIMI_FACTS section 2: 139,644 tensors, 1,026,470,731,056 elements including scales; ~1T total, ~32B active."""
    fp = footprint(ModelConfig.from_dict(KIMI_K2_CONFIG))
    assert fp.num_tensors == 139_644
    assert fp.num_elements == 1_026_470_731_056
    assert 1.0e12 < fp.total_params < 1.05e12
    assert 32e9 < fp.active_params < 33.5e9
    # one expert: gate/up [2048, 7168] + down [7168, 2048] fp8 codes, scale grids [16, 56] x2 + [56, 16] float32
    assert fp.expert_bytes == 3 * 2048 * 7168 + 3 * 16 * 56 * 4
    assert fp.num_routed_experts == 60 * 384
    assert fp.kv_bytes_per_token(2) == 61 * (512 + 64) * 2


@pytest.mark.parametrize("name", ["tiny", "demo", "k2-slice"])
def test_param_counts_agree_with_the_model(name):
    config = ModelConfig.from_dict(PRESETS[name])
    fp = footprint(config)
    counts = param_counts(config)
    assert (fp.routed_params, fp.resident_params, fp.total_params) == (
        counts["routed_experts"], counts["resident"], counts["total"])
    assert fp.kv_bytes_per_token(4) == KVCache.bytes_per_token(config, torch.float32)


def test_bytes_match_a_written_checkpoint(tmp_path):
    path = write_checkpoint(PRESETS["tiny"], tmp_path / "tiny", num_shards=3, with_tokenizer=False)
    fp = footprint(ModelConfig.from_file(path))
    data = 0
    for shard in path.glob("*.safetensors"):
        raw = shard.read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        data += len(raw) - 8 - header_len
    assert fp.checkpoint_bytes == data
    assert json.loads((path / "model.safetensors.index.json").read_text())["metadata"]["total_size"] == data
    with Checkpoint.open(path) as ckpt:
        assert fp.expert_bytes == ckpt.expert(1, 0).nbytes
        expert_names = [n for n in ckpt.weight_map if ".mlp.experts." in n]
        assert fp.routed_bytes == sum(ckpt.info(n).nbytes for n in expert_names)


def test_estimate_all_cached_scales_with_bandwidth():
    fp = footprint(ModelConfig.from_dict(PRESETS["k2-slice"]))
    kwargs = dict(ram_cache_bytes=fp.routed_bytes, disk_bandwidth=1e9, cpu_read_bytes=10**9)
    slow = estimate_decode(fp, memory_bandwidth=10e9, **kwargs)
    fast = estimate_decode(fp, memory_bandwidth=20e9, **kwargs)
    assert slow.hit_rate == 1.0 and slow.seconds["experts_disk"] == 0
    assert fast.tokens_per_s == pytest.approx(2 * slow.tokens_per_s)
    expected = (fp.expert_bytes_per_token + 10**9) / (10e9 * KERNEL_EFFICIENCY)
    assert slow.seconds_per_token == pytest.approx(expected)


def test_estimate_half_cached_reads_half_from_disk():
    fp = footprint(ModelConfig.from_dict(PRESETS["k2-slice"]))
    est = estimate_decode(fp, ram_cache_bytes=fp.routed_bytes // 2, memory_bandwidth=30e9, disk_bandwidth=2e9,
                          cpu_read_bytes=0, gpu_read_bytes=5 * 10**9, gpu_kv_bytes_per_token=1000,
                          gpu_bandwidth=1e12, context_tokens=1000)
    assert est.hit_rate == pytest.approx(0.5, abs=1e-9) and est.gpu_hit_rate == 0
    assert est.seconds["experts_disk"] == pytest.approx(fp.expert_bytes_per_token * 0.5 / 2e9, rel=1e-6)
    assert est.seconds["kv"] == pytest.approx(1000 * 1000 / 1e12)
    assert est.seconds["resident_gpu"] == pytest.approx(5e9 / 1e12)
    assert math.isclose(est.tokens_per_s * est.seconds_per_token, 1.0)
    assert any("1000 context tokens" in a for a in est.assumptions)


def test_estimate_gpu_tier_takes_its_share_first():
    fp = footprint(ModelConfig.from_dict(PRESETS["k2-slice"]))
    est = estimate_decode(fp, ram_cache_bytes=fp.routed_bytes, memory_bandwidth=30e9, disk_bandwidth=2e9,
                          cpu_read_bytes=0, gpu_tier_bytes=fp.routed_bytes // 4, gpu_bandwidth=2e12)
    assert est.gpu_hit_rate == pytest.approx(0.25, abs=1e-9) and est.hit_rate == pytest.approx(1.0)
    assert est.seconds["experts_gpu"] == pytest.approx(fp.expert_bytes_per_token * 0.25 / 2e12, rel=1e-6)
    assert est.seconds["experts_ram"] == pytest.approx(fp.expert_bytes_per_token * 0.75 / (30e9 * KERNEL_EFFICIENCY),
                                                       rel=1e-6)


def test_estimate_states_what_it_assumed():
    fp = footprint(ModelConfig.from_dict(PRESETS["tiny"]))
    est = estimate_decode(fp, ram_cache_bytes=0, memory_bandwidth=1e10, disk_bandwidth=None, cpu_read_bytes=0,
                          gpu_read_bytes=100)
    text = " ".join(est.assumptions)
    assert "disk not probed" in text and "GPU not probed" in text and "evenly" in text
    cpu_only = estimate_decode(fp, ram_cache_bytes=0, memory_bandwidth=1e10, disk_bandwidth=1e9, cpu_read_bytes=0)
    assert not any("GPU" in a for a in cpu_only.assumptions)
    with pytest.raises(ValueError, match="memory_bandwidth"):
        estimate_decode(fp, ram_cache_bytes=0, memory_bandwidth=0, disk_bandwidth=1e9, cpu_read_bytes=0)
