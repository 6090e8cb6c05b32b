"""The GPU tier: copies of the hottest routed experts in GPU memory, computed there.

With a GPU, the experts used on most tokens are cheaper to run where attention runs: the fused Triton MoE
(`kernels/triton_moe.py`) reads their block-fp8 weights at GPU bandwidth while the CPU computes the rest. The
tier is a `StackedExperts` of `num_slots` slots plus a `[layers, experts]` table of slot ids (-1: not here).

Placement follows routing statistics: each layer step adds its tokens to a decayed per-expert heat (half-life
`half_life_tokens`); after the step's routing is known, the hottest expert of the step that is not on the GPU
is copied in (from its RAM slot) when a slot is free or when it is hotter than the coldest resident by
`hysteresis`. At most `max_promotions` copies per layer step keep the host-to-device traffic bounded. A copy
on the GPU does not pin the RAM copy: the RAM tier decides on its own.

On a CPU device (tests) it computes with `fused_moe_reference`, the same sum one expert at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from kimi_local.model.config import ModelConfig
from kimi_local.model.fp8 import scale_grid_shape


def expert_payload_bytes(config: ModelConfig) -> int:
    h, i = config.hidden_size, config.moe_intermediate_size
    grid_up = scale_grid_shape(i, h)
    grid_down = scale_grid_shape(h, i)
    return 3 * h * i + 4 * (2 * grid_up[0] * grid_up[1] + grid_down[0] * grid_down[1])


class GpuTier:
    def __init__(self, config: ModelConfig, num_slots: int, device: str | torch.device | None = None,
                 half_life_tokens: float = 256.0, hysteresis: float = 1.25, max_promotions: int = 1):
        from kimi_local.kernels.triton_moe import StackedExperts

        if num_slots < 1:
            raise ValueError(f"GPU tier needs at least one slot, got {num_slots}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.num_layers, self.num_experts = config.num_hidden_layers, config.n_routed_experts
        self.stacked = StackedExperts.empty(num_slots, config.hidden_size, config.moe_intermediate_size, self.device)
        self.slot_of = torch.full((self.num_layers, self.num_experts), -1, dtype=torch.int32, device=self.device)
        self.host_slot_of = np.full((self.num_layers, self.num_experts), -1, dtype=np.int64)
        self.key_of_slot = np.full(num_slots, -1, dtype=np.int64)
        self.heat = np.zeros((self.num_layers, self.num_experts))
        self.decay = 0.5 ** (1.0 / half_life_tokens)
        self.hysteresis = hysteresis
        self.max_promotions = max_promotions
        self.payload_bytes = expert_payload_bytes(config)
        self.promotions = 0

    @classmethod
    def for_budget(cls, config: ModelConfig, budget_bytes: int, device: str | None = None) -> "GpuTier":
        num_slots = int(budget_bytes) // expert_payload_bytes(config)
        if num_slots < 1:
            raise ValueError(f"GPU tier budget of {budget_bytes} bytes holds no expert "
                             f"({expert_payload_bytes(config)} bytes each)")
        return cls(config, num_slots, device)

    @property
    def num_slots(self) -> int:
        return len(self.key_of_slot)

    def contains(self, layer_idx: int, expert_ids: np.ndarray) -> np.ndarray:
        return self.host_slot_of[layer_idx, expert_ids] >= 0

    def observe(self, store, layer_idx: int, expert_ids: np.ndarray, counts: np.ndarray) -> None:
        """Account one layer step's routing and promote its hottest missing expert(s)."""
        num_tokens = max(1, int(counts.sum()) // max(1, store.top_k))
        self.heat[layer_idx] *= self.decay**num_tokens
        self.heat[layer_idx, expert_ids] += counts
        missing = expert_ids[~self.contains(layer_idx, expert_ids)]
        if missing.size == 0:
            return
        order = missing[np.argsort(-self.heat[layer_idx, missing], kind="stable")][: self.max_promotions]
        for expert_id in order.tolist():
            slot = self._slot_for(self.heat[layer_idx, expert_id])
            if slot is None:
                break
            with store.lease(layer_idx, [expert_id]) as (weights,):
                self.stacked.load_slot(slot, weights)
            old = int(self.key_of_slot[slot])
            if old >= 0:
                self.host_slot_of.reshape(-1)[old] = -1
                self.slot_of.view(-1)[old] = -1
            key = layer_idx * self.num_experts + expert_id
            self.key_of_slot[slot] = key
            self.host_slot_of[layer_idx, expert_id] = slot
            self.slot_of[layer_idx, expert_id] = slot
            self.promotions += 1

    def _slot_for(self, heat: float) -> int | None:
        free = np.flatnonzero(self.key_of_slot < 0)
        if free.size:
            return int(free[0])
        resident_heat = self.heat.reshape(-1)[self.key_of_slot]
        coldest = int(np.argmin(resident_heat))
        return coldest if heat > self.hysteresis * resident_heat[coldest] else None

    def compute(self, layer_idx: int, x: torch.Tensor, topk_ids: torch.Tensor,
                topk_weights: torch.Tensor) -> torch.Tensor:
        """The sum over the (token, k) pairs whose expert is on this tier; other pairs add nothing."""
        from kimi_local.kernels.triton_moe import fused_moe, fused_moe_reference

        dev = self.device
        args = (x.to(dev), topk_ids.to(dev), topk_weights.to(dev), self.stacked, self.slot_of[layer_idx])
        out = fused_moe(*args) if dev.type == "cuda" else fused_moe_reference(*args)
        return out.to(x.device)

    def snapshot(self) -> dict:
        resident = int((self.key_of_slot >= 0).sum())
        return {"gpu_slots": self.num_slots, "gpu_resident_experts": resident,
                "gpu_bytes": resident * self.payload_bytes, "gpu_promotions": self.promotions}
