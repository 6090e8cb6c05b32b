"""Where the resident (non-routed-expert) parts of the model live.

With a GPU, the budget is filled in order of use per token: the transformer layers from the first (attention,
shared expert, dense MLP, router, each layer's KV cache), then lm_head, then the embedding table (a gather, the
cheapest part to leave on the CPU). Layers that do not fit stay on the CPU; the hidden state moves between devices
at the boundary. Linear weights stay block-fp8 (1 byte per weight plus scales) on either side: Triton kernels on
the GPU, the Numba kernels on the CPU, so a layer takes the same bytes wherever it sits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kimi_local.model.config import ModelConfig
from kimi_local.model.layout import is_ignored, layer_tensors

GIB = 1 << 30


@dataclass(frozen=True)
class Placement:
    layer_devices: tuple[torch.device, ...]
    embed_device: torch.device
    head_device: torch.device
    dtype: torch.dtype
    gpu_bytes: int = 0  # planned GPU bytes (weights + KV cache)
    budget_bytes: int = 0

    @classmethod
    def uniform(cls, num_layers: int, device: torch.device | str, dtype: torch.dtype) -> "Placement":
        device = torch.device(device)
        return cls((device,) * num_layers, device, device, dtype)

    def report(self) -> str:
        gpu = [i for i, d in enumerate(self.layer_devices) if d.type == "cuda"]
        if not gpu and self.embed_device.type != "cuda" and self.head_device.type != "cuda":
            return "all resident layers on the CPU"
        parts = [f"layers {gpu[0]}-{gpu[-1]} on {self.layer_devices[gpu[0]]}" if gpu else "no layer on the GPU"]
        cpu = [i for i, d in enumerate(self.layer_devices) if d.type != "cuda"]
        if cpu:
            parts.append(f"layers {cpu[0]}-{cpu[-1]} on the CPU (over the GPU budget)")
        parts.append(f"lm_head on {self.head_device}, embeddings on {self.embed_device}")
        parts.append(f"{self.gpu_bytes / GIB:.2f} of {self.budget_bytes / GIB:.2f} GiB GPU budget planned")
        return "; ".join(parts)


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def layer_gpu_bytes(config: ModelConfig, layer_idx: int, dtype: torch.dtype, kv_tokens: int) -> int:
    """GPU bytes of one resident layer: fp8 linears as stored, kv_b_proj dequantized (the absorbed form needs it),
    norms in the compute dtype, the router in fp32, and its slice of the KV cache for `kv_tokens` tokens."""
    size = _dtype_size(dtype)
    total = 0
    for spec in layer_tensors(config, layer_idx, include_experts=False):
        if is_ignored(spec.name):
            continue
        n = math.prod(spec.shape)
        if ".kv_b_proj." in spec.name:
            total += n * size if spec.name.endswith(".weight") else 0
        elif spec.dtype == "F8_E4M3" or spec.name.endswith("weight_scale_inv"):
            total += spec.nbytes
        elif ".mlp.gate." in spec.name:
            total += n * 4
        else:
            total += n * size
    return total + kv_tokens * (config.kv_lora_rank + config.qk_rope_head_dim) * size


def plan_placement(config: ModelConfig, device: torch.device, dtype: torch.dtype, gpu_budget_bytes: int,
                   kv_tokens: int) -> Placement:
    """Fill `gpu_budget_bytes` in order of per-token use; `kv_tokens` = KV slots x context length."""
    if device.type != "cuda":
        return Placement.uniform(config.num_hidden_layers, device, dtype)
    cpu = torch.device("cpu")
    used = 0
    layer_devices = []
    spilled = False
    for i in range(config.num_hidden_layers):
        need = layer_gpu_bytes(config, i, dtype, kv_tokens)
        if not spilled and used + need <= gpu_budget_bytes:
            used += need
            layer_devices.append(device)
        else:
            spilled = True  # keep the GPU part a prefix: one hop to the CPU per token, not many
            layer_devices.append(cpu)
    table = config.vocab_size * config.hidden_size * _dtype_size(dtype)
    head_device = embed_device = cpu
    if used + table <= gpu_budget_bytes:
        head_device, used = device, used + table
    if used + table <= gpu_budget_bytes:
        embed_device, used = device, used + table
    return Placement(tuple(layer_devices), embed_device, head_device, dtype, used, gpu_budget_bytes)
