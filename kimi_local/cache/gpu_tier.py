"""The GPU tier: copies of the hottest routed experts in GPU memory, computed there.

With a GPU, the experts used on most tokens are cheaper to run where attention runs: the fused Triton MoE
(`kernels/triton_moe.py`) reads their block-fp8 weights at GPU bandwidth while the CPU computes the rest. The
tier is a `StackedExperts` of `num_slots` slots plus a `[layers, experts]` table of slot ids (-1: not here).

Placement follows routing statistics: a `RoutingStats` (the same decayed per-layer expert counts the metrics
show, half-life `half_life_tokens`) gets each layer step's routing. `observe` names the step's hottest experts
that are not on the GPU (at most `max_promotions` per layer step, which keeps the host-to-device traffic
bounded); the backend computes them on the CPU this step, as usual, and while their RAM slots are leased for
that, `promote` copies each in when a GPU slot is free or when it is hotter than the coldest resident by
`hysteresis`. So a promotion costs the RAM tier nothing: no extra lookup, read or lease, and the step's
prefetch and prediction accounting stays what it is without a GPU tier. A copy on the GPU does not pin the RAM
copy: the RAM tier decides on its own (and prefetch skips experts that sit here).

On a CPU device (tests) it computes with `fused_moe_reference`, the same sum one expert at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from kimi_local.engine.routing_stats import RoutingStats
from kimi_local.model.config import ModelConfig
from kimi_local.model.experts import ExpertWeights
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
        self.stats = RoutingStats(self.num_layers, self.num_experts, half_life_tokens=half_life_tokens)
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

    def observe(self, layer_idx: int, ids: np.ndarray) -> list[int]:
        """Account one layer step's routing (`ids`: [tokens, k]); return the experts to `promote` once the CPU
        has them leased for this step: its hottest experts not on the GPU, hottest first."""
        self.stats(layer_idx, ids)
        experts = np.unique(ids)
        missing = experts[~self.contains(layer_idx, experts)]
        if missing.size == 0:
            return []
        heat = self.stats.counts_at(layer_idx, missing)
        order = np.argsort(-heat, kind="stable")[: self.max_promotions]
        return [int(missing[i]) for i in order if self._slot_for(heat[i]) is not None]

    def promote(self, layer_idx: int, expert_id: int, weights: ExpertWeights) -> bool:
        """Copy an expert in from its (leased) RAM slot if it earns a GPU slot; True when it did."""
        if self.host_slot_of[layer_idx, expert_id] >= 0:
            return False
        slot = self._slot_for(float(self.stats.counts_at(layer_idx, expert_id)))
        if slot is None:
            return False
        self.stacked.load_slot(slot, weights)
        old = int(self.key_of_slot[slot])
        if old >= 0:
            self.host_slot_of.reshape(-1)[old] = -1
            self.slot_of.view(-1)[old] = -1
        self.key_of_slot[slot] = layer_idx * self.num_experts + expert_id
        self.host_slot_of[layer_idx, expert_id] = slot
        self.slot_of[layer_idx, expert_id] = slot
        self.promotions += 1
        return True

    def _slot_for(self, heat: float) -> int | None:
        free = np.flatnonzero(self.key_of_slot < 0)
        if free.size:
            return int(free[0])
        resident_heat = self.stats.counts_at(*np.divmod(self.key_of_slot, self.num_experts))
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
