"""Auto-sizing rules on hand-made machines: headroom is always left, caps and floors hold, GPUs change placement."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kimi_local import sizing
from kimi_local.config import Config, build_config
from kimi_local.footprint import footprint
from kimi_local.model.config import ModelConfig
from kimi_local.model.presets import KIMI_K2_CONFIG, PRESETS
from kimi_local.residency import resident_split
from kimi_local.sizing import GiB, GpuInfo, Machine

K2 = footprint(ModelConfig.from_dict(KIMI_K2_CONFIG))
SLICE = footprint(ModelConfig.from_dict(PRESETS["k2-slice"]))
H200 = GpuInfo("NVIDIA H200", 140 * GiB, 139 * GiB)


def machine(ram_gib: float, available_gib: float | None = None, cores: int = 16, gpus=()) -> Machine:
    return Machine(ram_total=int(ram_gib * GiB), ram_available=int((available_gib or ram_gib) * GiB),
                   physical_cores=cores, logical_cores=2 * cores, gpus=tuple(gpus))


def test_headroom_is_the_larger_of_minimum_and_fraction():
    assert sizing.ram_headroom_bytes(machine(16)) == sizing.HEADROOM_MIN_BYTES
    assert sizing.ram_headroom_bytes(machine(512)) == int(0.10 * 512 * GiB)


@pytest.mark.parametrize("ram,available", [(64, 64), (256, 200), (512, 500), (24, 10)])
def test_auto_cache_leaves_headroom(ram, available):
    m = machine(ram, available, gpus=[H200])
    cache = sizing.resolve_ram_cache_bytes(Config(), K2, m)
    assert 0 < cache <= K2.routed_bytes
    assert cache + sizing.ram_headroom_bytes(m) <= m.ram_total
    assert cache <= m.ram_available


def test_auto_cache_subtracts_cpu_resident_layers():
    m = machine(256)
    on_gpu = sizing.resolve_ram_cache_bytes(Config(), K2, replace(m, gpus=(H200,)))
    on_cpu = sizing.resolve_ram_cache_bytes(Config(), K2, m)
    assert on_gpu - on_cpu == sizing.cpu_resident_bytes(Config(), K2, m)
    cpu_side = resident_split(K2.model, "cpu", "float32", 0, 8192 * 4)
    assert sizing.cpu_resident_bytes(Config(), K2, m) == cpu_side.cpu_bytes
    assert cpu_side.cpu_kv_bytes == 8192 * 4 * K2.kv_bytes_per_token(4)


def test_gpu_spill_lands_in_ram():
    small_gpu = machine(256, gpus=[GpuInfo("small", 12 * GiB, 12 * GiB)])
    split = sizing.split_resident(Config(), K2, small_gpu)
    assert 0 < split.num_gpu_layers < 61 and split.cpu_bytes > 0
    assert sizing.cpu_resident_bytes(Config(), K2, small_gpu) == split.cpu_bytes
    assert split.gpu_bytes <= int(0.9 * 12 * GiB)


def test_auto_cache_is_capped_at_all_routed_experts_and_floored_at_zero():
    assert sizing.resolve_ram_cache_bytes(Config(), SLICE, machine(2048)) == SLICE.routed_bytes
    assert sizing.resolve_ram_cache_bytes(Config(), K2, machine(24)) == 0  # K2 fp32 resident alone needs ~44 GiB


def test_explicit_ram_gb_wins_and_is_capped(caplog):
    config = build_config({"cache.ram_gb": 3.0})
    assert sizing.resolve_ram_cache_bytes(config, K2, machine(64)) == 3 * GiB
    big = build_config({"cache.ram_gb": 1000.0})
    assert sizing.resolve_ram_cache_bytes(big, SLICE, machine(64)) == SLICE.routed_bytes
    with caplog.at_level("WARNING"):
        sizing.resolve_ram_cache_bytes(build_config({"cache.ram_gb": 60.0}), K2, machine(64, gpus=[H200]))
    assert "headroom" in caplog.text


def test_resolve_accepts_a_checkpoint_like_object():
    class FakeCheckpoint:
        config = ModelConfig.from_dict(PRESETS["k2-slice"])

    assert sizing.resolve_ram_cache_bytes(Config(), FakeCheckpoint(), machine(2048)) == SLICE.routed_bytes
    with pytest.raises(TypeError, match="ModelConfig, Checkpoint or Footprint"):
        sizing.resolve_ram_cache_bytes(Config(), object(), machine(64))


def test_threads_zero_means_physical_cores():
    assert sizing.resolve_threads(Config(), machine(64, cores=12)) == 12
    assert sizing.resolve_threads(build_config({"engine.threads": 3}), machine(64, cores=12)) == 3


def test_device_and_dtype_resolution():
    cpu, gpu = machine(64), machine(64, gpus=[H200])
    assert (sizing.device_kind(Config(), cpu), sizing.dtype_name(Config(), cpu)) == ("cpu", "float32")
    assert (sizing.device_kind(Config(), gpu), sizing.dtype_name(Config(), gpu)) == ("cuda", "bfloat16")
    forced = build_config({"engine.device": "cpu", "engine.dtype": "bfloat16"})
    assert (sizing.device_kind(forced, gpu), sizing.dtype_bytes(forced, gpu)) == ("cpu", 2)


def test_gpu_budget():
    gpu = machine(64, gpus=[H200])
    assert sizing.resolve_gpu_memory_bytes(Config(), gpu) == int(0.9 * H200.free_bytes)
    assert sizing.resolve_gpu_memory_bytes(build_config({"engine.gpu_memory_gb": 40.0}), gpu) == 40 * GiB
    assert sizing.resolve_gpu_memory_bytes(Config(), machine(64)) == 0


def test_recommend_on_a_cpu_workstation_prefers_bfloat16_for_k2():
    m = machine(256, 250, cores=32)
    rec = sizing.recommend(m, K2)
    assert rec.threads == 32 and rec.device == "cpu" and rec.dtype == "bfloat16"
    half = build_config({"engine.dtype": "bfloat16"})
    exact = sizing.auto_ram_cache_bytes(half, K2, m) / GiB
    assert exact - 0.1 < rec.ram_gb <= exact
    assert rec.gpu_memory_gb == 0 and rec.gpu_cache_gb == 0


def test_recommend_with_a_gpu_sizes_budget_and_expert_tier():
    m = machine(128, 120, gpus=[H200])
    rec = sizing.recommend(m, K2)
    assert rec.device == "cuda" and rec.dtype == "auto"
    assert 0.9 * 139 - 0.1 - 1e-6 < rec.gpu_memory_gb <= 0.9 * 139
    need = resident_split(K2.model, "cuda", "bfloat16", 1 << 62, 8192 * 4).gpu_bytes / GiB
    assert rec.gpu_cache_gb == pytest.approx(0.9 * 139 - need, abs=0.2)
    assert rec.ram_gb == pytest.approx(min(128 - 12.8, 120), abs=0.1)


def test_recommend_writes_auto_when_every_expert_fits():
    assert sizing.recommend(machine(2048), SLICE).ram_gb == 0
    assert sizing.resolve_ram_cache_bytes(Config(), SLICE, machine(2048)) == SLICE.routed_bytes


def test_recommend_notes_a_machine_too_small():
    rec = sizing.recommend(machine(16), K2)
    assert rec.ram_gb == 0 and any("too small" in note for note in rec.notes)


def test_plan_memory_fits_and_reports_what_does_not():
    ok = sizing.plan_memory(Config(), SLICE, machine(64, gpus=[H200]))
    assert ok.fits and ok.device == "cuda" and ok.gpu_need_bytes == ok.resident.gpu_bytes
    assert ok.resident.cpu_bytes == 0 and ok.kv_bytes == 8192 * 4 * SLICE.kv_bytes_per_token(2)
    small_gpu = replace(machine(64), gpus=(GpuInfo("small", GiB, GiB),))
    plan = sizing.plan_memory(Config(), SLICE, small_gpu)
    assert plan.fits and any("run on the CPU" in n for n in plan.notes)  # the loader spills, it does not fail
    plan = sizing.plan_memory(build_config({"cache.gpu_gb": 2.0}), SLICE, small_gpu)
    assert any(p.startswith("GPU: expert tier") for p in plan.problems)
    plan = sizing.plan_memory(build_config({"cache.ram_gb": 6.0}), SLICE, machine(8))
    assert any(p.startswith("RAM:") for p in plan.problems)
    plan = sizing.plan_memory(build_config({"engine.device": "cuda:1"}), SLICE, machine(64, gpus=[H200]))
    assert any("1 GPU" in p for p in plan.problems)


def test_probe_machine_reports_this_machine(tmp_path):
    m = sizing.probe_machine(tmp_path / "not" / "yet")
    assert m.ram_total >= m.ram_available > 0
    assert m.logical_cores >= m.physical_cores >= 1
    assert m.disk_path == str(tmp_path) and m.disk_free > 0


@pytest.mark.gpu
def test_probe_gpus_reports_cuda_devices():
    import torch

    gpus = sizing.probe_gpus()
    assert len(gpus) == torch.cuda.device_count() >= 1
    assert all(0 < g.free_bytes <= g.total_bytes for g in gpus)
