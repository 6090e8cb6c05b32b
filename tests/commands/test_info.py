"""`kimi-local info` figures on the tiny checkpoint and the k2-slice config, on described machines."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from kimi_local.cli import main
from kimi_local.footprint import KERNEL_EFFICIENCY
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.config import ModelConfig
from kimi_local.model.deepseek import KimiModel, KVCache, param_counts
from kimi_local.model.experts import TorchReferenceExperts
from kimi_local.model.presets import PRESETS
from kimi_local.sizing import GiB, GpuInfo
from tests.test_residency import unique_tensor_bytes

H200 = GpuInfo("NVIDIA H200", 140 * GiB, 139 * GiB)


def run_info(capsys, *argv) -> dict:
    assert main(["info", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def k2_slice_dir(tmp_path) -> Path:
    """A k2-slice 'download' with only its config.json (the weights would be 9.6 GB)."""
    path = tmp_path / "k2-slice"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(PRESETS["k2-slice"]))
    return path


def test_tiny_figures_match_the_checkpoint(capsys, fake_machine, tiny_checkpoint):
    fake_machine(ram_gib=64, memory_bandwidth=20e9)
    info = run_info(capsys, "--model", str(tiny_checkpoint), "--context", "0")
    config = ModelConfig.from_file(tiny_checkpoint)
    counts = param_counts(config)
    assert info["parameters"]["total"] == counts["total"]
    assert info["parameters"]["routed_experts"] == counts["routed_experts"]
    assert info["parameters"]["resident"] == counts["resident"]
    data = 0
    for shard in tiny_checkpoint.glob("*.safetensors"):
        raw = shard.read_bytes()
        data += len(raw) - 8 - struct.unpack("<Q", raw[:8])[0]
    assert info["bytes"]["checkpoint"] == data
    with Checkpoint.open(tiny_checkpoint) as ckpt:
        assert info["bytes"]["per_expert"] == ckpt.expert(1, 3).nbytes
    assert info["bytes"]["kv_per_token"] == KVCache.bytes_per_token(config, torch.float32)  # CPU: float32
    assert info["files"] == {"index": True, "shards": 3, "shards_present": 3,
                             "bytes_present": sum(p.stat().st_size for p in tiny_checkpoint.glob("*.safetensors"))}
    assert info["plan"]["device"] == "cpu" and info["plan"]["threads"] == 8
    assert info["plan"]["ram_cache"] == info["bytes"]["routed_experts"]  # 64 GiB holds every tiny expert
    assert info["fits"] and info["problems"] == []
    est = info["estimate"]
    assert est["hit_rate"] == 1.0
    read = info["bytes"]["experts_read_per_token"] + info["plan"]["read_per_token_cpu"]
    assert est["seconds_per_token"] == pytest.approx(read / (20e9 * KERNEL_EFFICIENCY))
    ckpt = Checkpoint.open(tiny_checkpoint)
    model = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), dtype=torch.float32)
    assert info["plan"]["resident_cpu"] == unique_tensor_bytes(model)  # fp8 linears hold their codes as buffers


def test_tiny_text_output(capsys, fake_machine, tiny_checkpoint):
    fake_machine()
    assert main(["info", "--model", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    for label in ("model", "parameters", "checkpoint", "per token", "placement", "RAM", "machine", "bandwidth",
                  "decode", "assumes", "fits"):
        assert any(line.startswith(label) for line in out.splitlines()), label
    assert "3 layers (1 dense + 2 MoE)" in out and "tokens/s" in out


def test_k2_slice_on_a_gpu_workstation(capsys, fake_machine, k2_slice_dir):
    fake_machine(ram_gib=128, gpus=(H200,), memory_bandwidth=50e9, gpu_bandwidth=3e12)
    info = run_info(capsys, "--model", str(k2_slice_dir))
    b, plan = info["bytes"], info["plan"]
    assert info["model"]["num_moe_layers"] == 3 and info["model"]["n_routed_experts"] == 64
    assert b["per_expert"] == 3 * 2048 * 7168 + 3 * 16 * 56 * 4
    assert b["routed_experts"] == 3 * 64 * b["per_expert"]
    assert b["experts_read_per_token"] == 3 * 8 * b["per_expert"]
    assert b["kv_per_token"] == 4 * (512 + 64) * 2  # bfloat16 on the GPU
    assert plan["device"] == "cuda" and plan["dtype"] == "bfloat16"
    assert plan["gpu_layers"] == plan["num_layers"] == 4 and plan["resident_cpu"] == plan["kv_cpu"] == 0
    assert plan["gpu_need"] == plan["kv_cache"] + plan["resident_gpu"]
    assert plan["kv_cache"] == 8192 * 4 * b["kv_per_token"]
    assert plan["ram_cache"] == b["routed_experts"]
    assert info["files"]["shards"] == 0 and info["fits"]
    assert info["estimate"]["seconds"]["resident_gpu"] == pytest.approx(plan["read_per_token_gpu"] / 3e12)
    # on the GPU linears stay block-fp8: the resident layers take about their checkpoint bytes, not 2x
    assert plan["resident_gpu"] < 1.5 * b["resident"]


def test_k2_slice_small_ram_reads_experts_from_disk(capsys, fake_machine, k2_slice_dir):
    fake_machine(ram_gib=8, gpus=(H200,), memory_bandwidth=30e9, disk_bandwidth=3e9)
    info = run_info(capsys, "--model", str(k2_slice_dir))
    assert info["plan"]["ram_cache"] == 4 * GiB  # 8 GiB - 4 GiB headroom, resident layers on the GPU
    assert info["estimate"]["hit_rate"] == pytest.approx(4 * GiB / info["bytes"]["routed_experts"])
    assert any("disk not probed" in a for a in info["estimate"]["assumptions"])


def test_budget_problems_are_reported(capsys, fake_machine, k2_slice_dir):
    fake_machine(ram_gib=16, disk_free_gib=1)
    info = run_info(capsys, "--model", str(k2_slice_dir), "--pin", "0:1,2:99", "--max-context", "200000",
                    "--ram-cache-gb", "9")
    text = "\n".join(info["problems"])
    assert not info["fits"]
    assert "cache.pinned '0:1': layer 0 has no routed experts" in text
    assert "cache.pinned '2:99': expert 99 out of range" in text
    assert "engine.max_context = 200000 exceeds" in text
    assert "RAM:" in text and "disk: the checkpoint needs" in text


def test_disk_probe_needs_shards_and_uses_them(capsys, fake_machine, k2_slice_dir, tiny_checkpoint):
    fake_machine(disk_bandwidth=3e9)
    assert main(["info", "--model", str(k2_slice_dir), "--disk-probe"]) == 1
    assert "--disk-probe needs a model directory with shards" in capsys.readouterr().err
    info = run_info(capsys, "--model", str(tiny_checkpoint), "--disk-probe")
    assert info["machine"]["disk_bandwidth"] == 3e9


def test_missing_model_dir_is_one_clear_line(capsys, fake_machine, tmp_path):
    fake_machine()
    assert main(["info", "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
