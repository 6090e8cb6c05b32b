"""`CachedExperts`: the `RoutedExperts` backend that computes from the expert store.

It wraps any kernel backend that takes an `ExpertSource` (`NumbaExperts`, `TorchReferenceExperts`): per layer
step it leases the step's experts from the store, lets the kernel read them from their RAM slots, and releases
them. Around that it
- feeds the store's routing profile (tokens and router weight per expert; held back until the forward pass
  succeeds when the engine asks, `routing_deferred`);
- forwards the model's prefetch hint to the store;
- splits the step when it needs more experts than the RAM budget holds at once (a long prefill chunk on a
  small budget): the experts go in groups that fit, each token row masked to the experts of the group;
- computes first the experts that are in RAM when the step starts and then those still being read (a miss or a
  late prefetch), so the kernel works while the disk brings the rest; the partial sums add up;
- sends the experts that sit in the GPU tier (if any) to the GPU kernel, running it while the CPU kernel does
  the rest; the two partial sums add up to the step's output. The experts the tier wants next are computed on
  the CPU this step and copied to the GPU from their leased RAM slots after the CPU kernel: the promotion
  makes no store call of its own, so it neither counts as a lookup nor disturbs prefetch and prediction.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from kimi_local.cache.store import ExpertStore, StoreError
from kimi_local.model.experts import ExpertSource, ExpertWeights, RoutedExperts, TorchReferenceExperts


class _LeasedSource:
    """What the inner kernel sees: exactly the experts leased for the current group."""

    def __init__(self):
        self.layer_idx = -1
        self.weights: dict[int, ExpertWeights] = {}

    def get_expert(self, layer_idx: int, expert_id: int) -> ExpertWeights:
        if layer_idx != self.layer_idx or expert_id not in self.weights:
            raise StoreError(f"kernel asked for layer {layer_idx} expert {expert_id}, which is not leased")
        return self.weights[expert_id]


class CachedExperts:
    def __init__(self, store: ExpertStore, make_kernel: Callable[[ExpertSource], RoutedExperts] | None = None):
        self.store = store
        self._source = _LeasedSource()
        self.kernel = (make_kernel or TorchReferenceExperts)(self._source)

    def prefetch(self, layer_idx: int, expert_ids: torch.Tensor) -> None:
        self.store.prefetch(layer_idx, expert_ids)

    def routing_deferred(self, defer: Callable[..., None]):
        """The engine holds a pass's routing records until it succeeds: the profile's too (`store.py`)."""
        return self.store.routing_deferred(defer)

    def __call__(self, layer_idx: int, x: torch.Tensor, topk_ids: torch.Tensor,
                 topk_weights: torch.Tensor) -> torch.Tensor:
        ids = topk_ids.detach().to("cpu", torch.int64).numpy()
        weights = topk_weights.detach().to("cpu", torch.float32).numpy()
        experts, counts = np.unique(ids, return_counts=True)
        mass = np.bincount(ids.reshape(-1), weights=weights.reshape(-1), minlength=int(experts.max()) + 1)[experts]
        self.store.record_routing(layer_idx, experts, counts.astype(np.float64), mass, ids.shape[0])
        tier = self.store.gpu_tier
        if tier is None:
            return self._cpu(layer_idx, x, ids, weights, experts, counts, None, [])
        promote = tier.observe(layer_idx, ids)  # copied in below, from this step's own leases
        on_gpu = tier.contains(layer_idx, experts)
        if not on_gpu.any():
            return self._cpu(layer_idx, x, ids, weights, experts, counts, None, promote)
        gpu_out = tier.compute(layer_idx, x, topk_ids, topk_weights)  # async on CUDA
        cpu_experts = experts[~on_gpu]
        keep = np.isin(ids, cpu_experts)
        if not keep.any():
            return gpu_out
        return gpu_out + self._cpu(layer_idx, x, ids, weights, cpu_experts, counts[~on_gpu], keep, promote)

    def _cpu(self, layer_idx: int, x: torch.Tensor, ids: np.ndarray, weights: np.ndarray, experts: np.ndarray,
             counts: np.ndarray, keep: np.ndarray | None, promote: list[int]) -> torch.Tensor:
        room = self.store.max_lease
        if len(experts) > room:
            self.store.drop_prefetch_holds()
            room = self.store.max_lease
            if room < 1:
                raise StoreError(f"layer {layer_idx}: no RAM expert slot is free to compute with")
        if len(experts) <= room and keep is None:
            return self._group(layer_idx, x, ids, weights, experts, counts, promote)
        out = torch.zeros_like(x)
        for start in range(0, len(experts), room):
            group = experts[start : start + room]
            masked = _masked(ids, weights, group, keep)
            if masked is None:
                continue
            rows, sub_ids, sub_w = masked
            rows_t = torch.from_numpy(rows).to(x.device)
            part = self._group(layer_idx, x[rows_t], sub_ids, sub_w, group, counts[start : start + room], promote)
            out.index_add_(0, rows_t, part)
        return out

    def _group(self, layer_idx: int, x: torch.Tensor, ids: np.ndarray, weights: np.ndarray, experts: np.ndarray,
               counts: np.ndarray, promote: list[int]) -> torch.Tensor:
        """One leased group. Experts still being read when the step starts are computed after the others:
        the kernel works on what is in RAM while the disk brings the rest."""
        expert_list = experts.tolist()
        leased = self.store.acquire_ready(layer_idx, expert_list, counts.tolist())
        try:
            ready = np.array([w is not None for w in leased])
            if ready.all() or not ready.any():
                if not ready.all():
                    leased = self.store.wait_leased(layer_idx, expert_list)
                out = self._compute(layer_idx, x, ids, weights, expert_list, leased)
            else:
                out = self._compute_part(layer_idx, x, ids, weights, experts[ready], leased, ready)
                pending = experts[~ready]
                arrived = self.store.wait_leased(layer_idx, pending.tolist())
                out = out + self._compute_part(layer_idx, x, ids, weights, pending, arrived, None)
                leased = [w if w is not None else arrived[pending.tolist().index(e)]
                          for e, w in zip(expert_list, leased)]
            for expert_id in promote:  # GPU tier: copy from the slot this step leased anyway
                if expert_id in expert_list:
                    self.store.gpu_tier.promote(layer_idx, expert_id, leased[expert_list.index(expert_id)])
            return out
        finally:
            self.store.release(layer_idx, expert_list)

    def _compute_part(self, layer_idx: int, x: torch.Tensor, ids: np.ndarray, weights: np.ndarray,
                      part: np.ndarray, leased: list, select: np.ndarray | None) -> torch.Tensor:
        """The step's output from the experts in `part` only (their weights: `leased`, filtered by `select`)."""
        if select is not None:
            leased = [w for w, s in zip(leased, select) if s]
        out = torch.zeros_like(x)
        masked = _masked(ids, weights, part, None)
        if masked is None:
            return out
        rows, sub_ids, sub_w = masked
        rows_t = torch.from_numpy(rows).to(x.device)
        out.index_add_(0, rows_t, self._compute(layer_idx, x[rows_t], sub_ids, sub_w, part.tolist(), leased))
        return out

    def _compute(self, layer_idx: int, x: torch.Tensor, ids: np.ndarray, weights: np.ndarray,
                 expert_list: list[int], leased: list[ExpertWeights]) -> torch.Tensor:
        self._source.layer_idx = layer_idx
        self._source.weights = dict(zip(expert_list, leased))
        try:
            return self.kernel(layer_idx, x, torch.from_numpy(np.ascontiguousarray(ids)).to(x.device),
                               torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)).to(x.device))
        finally:
            self._source.weights = {}


def _masked(ids: np.ndarray, weights: np.ndarray, group: np.ndarray,
            keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The rows of a step that chose experts of `group` (and of `keep`, where given), their ids and weights
    restricted to those: a non-member points at one of its row's members with weight 0, so the kernel sees
    no expert outside the group. None if no row chose any."""
    member = np.isin(ids, group) if keep is None else np.isin(ids, group) & keep
    rows = np.flatnonzero(member.any(axis=1))
    if rows.size == 0:
        return None
    fill = ids[rows, member[rows].argmax(axis=1)]
    sub_ids = np.where(member[rows], ids[rows], fill[:, None])
    sub_w = np.where(member[rows], weights[rows], 0.0).astype(np.float32)
    return rows, sub_ids, sub_w
