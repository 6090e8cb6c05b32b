"""Where the resident (non-routed-expert) bytes of a model go, as the loader will place them.

The loader asks `model/placement.py` to fill the GPU budget in order of per-token use; this module runs the same
planner and prices both sides, so sizing and `info` agree with what loading does:

- a layer keeps its linears block-fp8 (codes + scales) on either side (Triton kernels on the GPU, Numba kernels
  on the CPU), kv_b_proj dequantized, norms in the compute dtype, the router in float32, plus its slice of the
  KV cache (`placement.layer_gpu_bytes`, which prices a layer the same wherever it sits);
- embeddings and lm_head are `vocab x hidden` tables in the compute dtype on whichever side the planner put them.

Per decoded token every resident weight is read once except the embedding table (one row), and each layer's KV
slice is read for every context token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kimi_local.model.config import ModelConfig
from kimi_local.model.placement import Placement, layer_gpu_bytes, plan_placement

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ResidentSplit:
    placement: Placement
    gpu_weight_bytes: int  # resident weights on the GPU (tables included)
    cpu_weight_bytes: int
    gpu_kv_bytes: int  # KV cache slices of the GPU layers, for all slots x context
    cpu_kv_bytes: int
    gpu_read_per_token: int  # weight bytes one decoded token reads on each side
    cpu_read_per_token: int
    gpu_kv_per_token: int  # KV bytes per context token on each side
    cpu_kv_per_token: int

    @property
    def num_gpu_layers(self) -> int:
        return sum(d.type == "cuda" for d in self.placement.layer_devices)

    @property
    def gpu_bytes(self) -> int:
        return self.gpu_weight_bytes + self.gpu_kv_bytes

    @property
    def cpu_bytes(self) -> int:
        return self.cpu_weight_bytes + self.cpu_kv_bytes


def resident_split(config: ModelConfig, device: str, dtype: str, gpu_budget_bytes: int, kv_tokens: int) -> ResidentSplit:
    """`device` "cuda[:N]" or "cpu"; `gpu_budget_bytes` for resident layers + KV (the GPU expert tier already off)."""
    torch_dtype = TORCH_DTYPES[dtype]
    size = torch.empty((), dtype=torch_dtype).element_size()
    placement = plan_placement(config, torch.device(device), torch_dtype, gpu_budget_bytes, kv_tokens)
    kv_per_layer = (config.kv_lora_rank + config.qk_rope_head_dim) * size
    sides = {"gpu": [0, 0, 0, 0], "cpu": [0, 0, 0, 0]}  # weights, kv, read per token, kv per token
    for i, dev in enumerate(placement.layer_devices):
        side = "gpu" if dev.type == "cuda" else "cpu"
        weights = layer_gpu_bytes(config, i, torch_dtype, 0)
        s = sides[side]
        s[0] += weights
        s[1] += kv_tokens * kv_per_layer
        s[2] += weights
        s[3] += kv_per_layer
    table = config.vocab_size * config.hidden_size * size
    head = sides["gpu" if placement.head_device.type == "cuda" else "cpu"]
    head[0] += table + config.hidden_size * size  # lm_head and the final norm
    head[2] += table
    embed = sides["gpu" if placement.embed_device.type == "cuda" else "cpu"]
    embed[0] += table
    embed[2] += config.hidden_size * size  # one row per token
    (gw, gk, gr, gkt), (cw, ck, cr, ckt) = sides["gpu"], sides["cpu"]
    return ResidentSplit(placement, gw, cw, gk, ck, gr, cr, gkt, ckt)
