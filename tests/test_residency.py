"""Resident bytes as the loader places them: the CPU side against a really loaded model, the GPU side against
the placement planner, spills to the CPU when the budget is short."""

from __future__ import annotations

import pytest
import torch

from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.config import ModelConfig
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts
from kimi_local.model.placement import layer_gpu_bytes, plan_placement
from kimi_local.model.presets import PRESETS
from kimi_local.residency import resident_split

torch.set_num_threads(1)


def unique_tensor_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for mod in module.modules():
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_side_matches_a_loaded_model(tiny_checkpoint, dtype):
    ckpt = Checkpoint.open(tiny_checkpoint)
    model = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), dtype=getattr(torch, dtype))
    split = resident_split(ckpt.config, "cpu", dtype, 0, kv_tokens=100)
    assert split.cpu_weight_bytes == unique_tensor_bytes(model)
    assert split.gpu_bytes == 0 and split.num_gpu_layers == 0
    size = 4 if dtype == "float32" else 2
    c = ckpt.config
    assert split.cpu_kv_bytes == 100 * c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * size
    # a token reads every resident weight once, except the embedding table (one row)
    assert split.cpu_read_per_token == split.cpu_weight_bytes - (c.vocab_size - 1) * c.hidden_size * size - c.hidden_size * size


def test_gpu_side_agrees_with_the_planner():
    config = ModelConfig.from_dict(PRESETS["k2-slice"])
    split = resident_split(config, "cuda", "bfloat16", 1 << 50, kv_tokens=4096)
    placement = plan_placement(config, torch.device("cuda"), torch.bfloat16, 1 << 50, 4096)
    assert split.num_gpu_layers == config.num_hidden_layers and split.cpu_bytes == 0
    final_norm = config.hidden_size * 2  # carried by the split, too small for the planner to count
    assert split.gpu_bytes == placement.gpu_bytes + final_norm


def test_short_budget_spills_the_last_layers_to_the_cpu():
    config = ModelConfig.from_dict(PRESETS["k2-slice"])
    kv = 1024
    first_two = sum(layer_gpu_bytes(config, i, torch.bfloat16, kv) for i in range(2))
    split = resident_split(config, "cuda", "bfloat16", first_two + 1, kv_tokens=kv)
    assert split.num_gpu_layers == 2
    table = config.vocab_size * config.hidden_size * 2
    spilled = sum(layer_gpu_bytes(config, i, torch.bfloat16, 0) for i in range(2, config.num_hidden_layers))
    assert split.cpu_weight_bytes == spilled + 2 * table + config.hidden_size * 2  # both tables stay on the CPU
    per_layer_kv = kv * (config.kv_lora_rank + config.qk_rope_head_dim) * 2
    assert split.cpu_kv_bytes == (config.num_hidden_layers - 2) * per_layer_kv
    assert split.gpu_bytes == first_two
