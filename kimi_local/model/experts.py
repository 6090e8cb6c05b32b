"""The routed-expert interface: the one seam between the model and whatever computes experts.

The model routes (router + top-k) and hands each MoE layer's routed work to a `RoutedExperts` object:

    out = experts(layer_idx, x [T, H], topk_ids [T, k] int64, topk_weights [T, k] float32) -> [T, H]

`topk_weights` already include normalization and `routed_scaling_factor`; the backend returns
sum_k w_k * expert_{id_k}(x), in x's dtype and on x's device. Where an expert's weights live and where it runs
is the backend's decision (the expert store), never the model's. `prefetch` is a hint: the model predicts the
next layer's experts and the backend may start fetching them.

Expert weights come from an `ExpertSource` as zero-copy numpy views of the checkpoint's native layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from kimi_local.model.fp8 import dequantize


@dataclass(frozen=True)
class ExpertWeights:
    """One routed expert in native block-fp8: uint8 e4m3 codes `[N, K]` and float32 ceil-grid scales."""

    gate_q: np.ndarray  # uint8 [I, H]
    gate_s: np.ndarray  # float32 [ceil(I/128), ceil(H/128)]
    up_q: np.ndarray  # uint8 [I, H]
    up_s: np.ndarray
    down_q: np.ndarray  # uint8 [H, I]
    down_s: np.ndarray  # float32 [ceil(H/128), ceil(I/128)]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.gate_q, self.gate_s, self.up_q, self.up_s, self.down_q, self.down_s))


class ExpertSource(Protocol):
    def get_expert(self, layer_idx: int, expert_id: int) -> ExpertWeights: ...


class RoutedExperts(Protocol):
    def __call__(
        self, layer_idx: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor: ...

    def prefetch(self, layer_idx: int, expert_ids: torch.Tensor) -> None: ...


def group_by_expert(topk_ids: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(expert_id, token_rows, slot_cols)] for every expert that got tokens, in ascending id order."""
    flat = topk_ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    k = topk_ids.shape[1]
    return [(int(e), order[s:t] // k, order[s:t] % k) for e, s, t in zip(ids, starts, ends)]


class TorchReferenceExperts:
    """Dequantizes each used expert on the fly and runs it with torch matmuls in float32. Slow; the oracle
    backend for tests and the fallback when no faster backend is configured."""

    def __init__(self, source: ExpertSource):
        self.source = source

    def prefetch(self, layer_idx: int, expert_ids: torch.Tensor) -> None:
        pass

    def __call__(self, layer_idx, x, topk_ids, topk_weights):
        xf = x.float()
        out = torch.zeros_like(xf)
        for expert_id, rows, slots in group_by_expert(topk_ids.cpu().numpy()):
            w = self.source.get_expert(layer_idx, expert_id)
            gate = torch.from_numpy(dequantize(w.gate_q, w.gate_s)).to(x.device)
            up = torch.from_numpy(dequantize(w.up_q, w.up_s)).to(x.device)
            down = torch.from_numpy(dequantize(w.down_q, w.down_s)).to(x.device)
            rows_t = torch.from_numpy(rows).to(x.device)
            h = xf[rows_t]
            y = (torch.nn.functional.silu(h @ gate.T) * (h @ up.T)) @ down.T
            weight = topk_weights[rows_t, torch.from_numpy(slots).to(x.device)].float().unsqueeze(1)
            out.index_add_(0, rows_t, y * weight)
        return out.to(x.dtype)
