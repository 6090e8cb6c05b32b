"""What a checkpoint costs: parameters and bytes by tier, and what decoding one token has to read.

Two tiers. The routed experts (Kimi-K2: 60 MoE layers x 384) stay in native block-fp8 on the CPU side: RAM
expert cache (and a GPU hot tier when there is a GPU), misses streamed from NVMe. Everything else is resident:
attention, the dense MLP, shared experts, routers, norms, embeddings and lm_head; what that costs in memory
depends on where it is placed and in which dtype (`residency.py`). Here: the checkpoint's own figures, from the
config alone (`layout.checkpoint_tensors`), so a 1 TB model can be sized before it is downloaded.

Decoding one token (batch 1) reads the k active experts of every MoE layer, the resident weights, and the
compressed KV cache of the context (per layer 512 + 64 values for Kimi-K2). `estimate_decode` turns those bytes
into seconds with measured bandwidths and says what it assumed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from kimi_local.model.config import ModelConfig
from kimi_local.model.layout import checkpoint_tensors, is_ignored, layer_tensors

KERNEL_EFFICIENCY = 0.6  # block-fp8 expert GEMV and torch mv reach ~0.6 of the streaming-read rate (TOOLCHAIN.md)
ASSUMED_DISK_BANDWIDTH = 2.0e9  # bytes/s when the disk was not probed: a modest NVMe read with O_DIRECT
ASSUMED_GPU_BANDWIDTH = 1.0e12  # bytes/s when the GPU was not probed


@dataclass(frozen=True)
class Footprint:
    model: ModelConfig = field(compare=False, repr=False)  # what the figures describe
    hidden_size: int
    num_layers: int
    num_moe_layers: int
    experts_per_token: int
    num_routed_experts: int  # all layers: num_moe_layers x n_routed_experts
    num_tensors: int  # in the checkpoint, scales and ignored buffers included
    num_elements: int  # likewise
    routed_params: int  # weights only, scales excluded
    resident_params: int
    embedding_params: int  # model.embed_tokens: one row is read per token
    router_params: int  # kept float32 at run time
    expert_bytes: int  # one routed expert on disk: fp8 codes + float32 scales
    routed_bytes: int  # all routed experts on disk
    resident_bytes: int  # everything else on disk (fp8 codes, scales, bf16 tensors, ignored buffers)
    kv_values_per_token: int  # layers x (kv_lora_rank + qk_rope_head_dim)

    @property
    def total_params(self) -> int:
        return self.routed_params + self.resident_params

    @property
    def expert_params(self) -> int:
        return self.routed_params // self.num_routed_experts if self.num_routed_experts else 0

    @property
    def active_params(self) -> int:
        """Parameters one token uses: all resident ones plus k routed experts per MoE layer."""
        return self.resident_params + self.num_moe_layers * self.experts_per_token * self.expert_params

    @property
    def checkpoint_bytes(self) -> int:
        return self.routed_bytes + self.resident_bytes

    @property
    def expert_bytes_per_token(self) -> int:
        return self.num_moe_layers * self.experts_per_token * self.expert_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return self.kv_values_per_token * dtype_bytes


def footprint(config: ModelConfig) -> Footprint:
    # MoE layers all have the same tensors, so the inventory of a model cut after its first MoE layer plus
    # (num_moe_layers - 1) copies of that layer is the full one, at a fraction of the cost (Kimi-K2: 139,644 specs).
    moe_ids = config.moe_layer_ids
    specs = checkpoint_tensors(replace(config, num_hidden_layers=moe_ids[0] + 1) if moe_ids else config)
    repeated = layer_tensors(config, moe_ids[0]) if len(moe_ids) > 1 else []
    t = dict.fromkeys(("tensors", "elements", "routed_params", "resident_params", "routed_bytes", "resident_bytes",
                       "embedding_params", "router_params"), 0)
    for group, times in ((specs, 1), (repeated, len(moe_ids) - 1)):
        for spec in group:
            n = math.prod(spec.shape)
            t["tensors"] += times
            t["elements"] += n * times
            params = n * times if not spec.name.endswith("weight_scale_inv") and not is_ignored(spec.name) else 0
            tier = "routed" if ".mlp.experts." in spec.name else "resident"
            t[f"{tier}_bytes"] += spec.nbytes * times
            t[f"{tier}_params"] += params
            if spec.name == "model.embed_tokens.weight":
                t["embedding_params"] = n
            elif spec.name.endswith((".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")):
                t["router_params"] += params
    num_routed = len(moe_ids) * config.n_routed_experts
    return Footprint(
        model=config, hidden_size=config.hidden_size, num_layers=config.num_hidden_layers, num_moe_layers=len(moe_ids),
        experts_per_token=config.num_experts_per_tok, num_routed_experts=num_routed, num_tensors=t["tensors"],
        num_elements=t["elements"], routed_params=t["routed_params"], resident_params=t["resident_params"],
        embedding_params=t["embedding_params"], router_params=t["router_params"],
        expert_bytes=t["routed_bytes"] // num_routed if num_routed else 0, routed_bytes=t["routed_bytes"],
        resident_bytes=t["resident_bytes"],
        kv_values_per_token=config.num_hidden_layers * (config.kv_lora_rank + config.qk_rope_head_dim),
    )


@dataclass(frozen=True)
class DecodeEstimate:
    tokens_per_s: float
    seconds_per_token: float
    hit_rate: float  # fraction of expert reads served from memory (GPU tier + RAM cache) instead of disk
    gpu_hit_rate: float  # the GPU tier's part of it
    seconds: dict[str, float]  # by part: experts_gpu, experts_ram, experts_disk, resident_gpu, resident_cpu, kv
    assumptions: tuple[str, ...]


def estimate_decode(fp: Footprint, *, ram_cache_bytes: int, memory_bandwidth: float, disk_bandwidth: float | None,
                    cpu_read_bytes: int, gpu_read_bytes: int = 0, cpu_kv_bytes_per_token: int = 0,
                    gpu_kv_bytes_per_token: int = 0, gpu_tier_bytes: int = 0, gpu_bandwidth: float | None = None,
                    context_tokens: int = 0) -> DecodeEstimate:
    """Batch-1 decode speed: bytes each part reads per token over the bandwidth of what holds them.

    `cpu_read_bytes`/`gpu_read_bytes`: resident weight bytes read per token on each side (residency.py);
    `*_kv_bytes_per_token`: KV bytes per context token on each side."""
    if memory_bandwidth <= 0:
        raise ValueError(f"memory_bandwidth must be positive, got {memory_bandwidth}")
    assumptions = [
        "routing spreads evenly over experts, so a cache's hit rate is its share of all routed bytes "
        "(real routing is skewed and pinned/hot experts raise it: pessimistic)",
        f"CPU kernels read at {KERNEL_EFFICIENCY:g} x the measured memory bandwidth",
        "disk reads of cache misses do not overlap compute (prefetch can hide part of them: pessimistic)",
        "bytes moved is all that costs: per-layer Python and kernel-launch overhead is left out (it dominates small "
        "models, so for them this is an upper bound)",
    ]
    if disk_bandwidth is None:
        disk_bandwidth = ASSUMED_DISK_BANDWIDTH
        assumptions.append(f"disk not probed: assumed {ASSUMED_DISK_BANDWIDTH / 1e9:g} GB/s (use --disk-probe)")
    uses_gpu = gpu_read_bytes or gpu_tier_bytes or gpu_kv_bytes_per_token
    if uses_gpu and gpu_bandwidth is None:
        gpu_bandwidth = ASSUMED_GPU_BANDWIDTH
        assumptions.append(f"GPU not probed: assumed {ASSUMED_GPU_BANDWIDTH / 1e9:g} GB/s")
    routed = fp.routed_bytes or 1
    gpu_hit = min(1.0, gpu_tier_bytes / routed)
    ram_hit = min(1.0 - gpu_hit, ram_cache_bytes / routed)
    cpu_rate = memory_bandwidth * KERNEL_EFFICIENCY
    gpu_rate = gpu_bandwidth or 1.0
    per_token = fp.expert_bytes_per_token
    seconds = {
        "experts_gpu": per_token * gpu_hit / gpu_rate if gpu_hit else 0.0,
        "experts_ram": per_token * ram_hit / cpu_rate,
        "experts_disk": per_token * max(0.0, 1.0 - gpu_hit - ram_hit) / disk_bandwidth,
        "resident_gpu": gpu_read_bytes / gpu_rate if gpu_read_bytes else 0.0,
        "resident_cpu": cpu_read_bytes / cpu_rate,
        "kv": context_tokens * (cpu_kv_bytes_per_token / cpu_rate
                                + (gpu_kv_bytes_per_token / gpu_rate if gpu_kv_bytes_per_token else 0.0)),
    }
    if context_tokens:
        assumptions.append(f"attention reads the KV cache of {context_tokens} context tokens")
    total = sum(seconds.values())
    return DecodeEstimate(1.0 / total if total else math.inf, total, gpu_hit + ram_hit, gpu_hit, seconds,
                          tuple(assumptions))
