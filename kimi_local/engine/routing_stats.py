"""Which experts the router is choosing right now: per-layer usage counts with exponential decay, and entropy.

`RoutingStats` is a routing hook (see `KimiModel.routing_hooks`): the model calls it once per MoE layer per
forward step with the chosen expert ids `[N, k]` of that step's N tokens (under an engine, once the step has
succeeded: `pass_records.py`, so a failed and retried step counts once). Each layer keeps one count per
expert; before a step's tokens are added, the old counts are multiplied by `decay ** N`, with
`decay = 0.5 ** (1 / half_life_tokens)`. So the counts are a sliding, token-weighted window: an expert used
`half_life_tokens` tokens ago weighs half as much as one used now, whether those tokens came in one prefill chunk
or in many decode steps.

The normalised counts of a layer are its current *load* (the share of routed slots each expert got; shares sum
to 1). Its Shannon entropy, in bits, says how spread the routing is: log2(E) when every expert is used equally,
log2(k) when the same k experts take every token. `normalized_entropy` divides by log2(E).

When the model also passes its prefetch guess (the next layer's experts predicted from the previous hidden
state), the stats count how many of the actually chosen experts had been predicted: prefetch recall.

The hook runs on the engine thread and `snapshot()` on whatever thread displays the numbers (TUI, server
metrics); a lock keeps the two apart. Memory: two float64 arrays of num_layers x num_experts (Kimi-K2: 61 x 384).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from kimi_local.engine.pass_records import remove_routing_hook


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of non-negative `counts` [..., E], as a distribution; 0 for empty rows."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be non-negative")
    totals = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    logp = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis=-1)


@dataclass(frozen=True)
class RoutingSnapshot:
    """A copy of the routing statistics at one moment; rows follow `layer_ids` (the MoE layers)."""

    layer_ids: tuple[int, ...]
    num_experts: int
    load: np.ndarray  # float64 [num_moe_layers, num_experts]: decayed share of routed slots, rows sum to 1 (or 0)
    entropy_bits: np.ndarray  # float64 [num_moe_layers]
    routed_tokens: int  # tokens routed through the first MoE layer since the start (not decayed)
    prefetch_recall: float | None  # chosen experts that had been predicted / all chosen (None: no predictions)

    @property
    def max_entropy_bits(self) -> float:
        return math.log2(self.num_experts) if self.num_experts > 1 else 0.0

    @property
    def normalized_entropy(self) -> np.ndarray:
        """Entropy / log2(E) per layer, in [0, 1]."""
        if self.max_entropy_bits == 0.0:
            return np.zeros_like(self.entropy_bits)
        return self.entropy_bits / self.max_entropy_bits

    @property
    def mean_normalized_entropy(self) -> float | None:
        """Over the layers that have routed anything; None before the first token."""
        active = self.load.sum(axis=1) > 0
        return float(self.normalized_entropy[active].mean()) if active.any() else None


class RoutingStats:
    """A routing hook keeping decayed per-layer expert counts (see the module docstring)."""

    def __init__(self, num_layers: int, num_experts: int, moe_layer_ids: list[int] | None = None,
                 half_life_tokens: float = 256.0):
        if num_layers < 1 or num_experts < 1:
            raise ValueError(f"num_layers and num_experts must be >= 1, got {num_layers} and {num_experts}")
        if not half_life_tokens > 0:
            raise ValueError(f"half_life_tokens must be > 0, got {half_life_tokens}")
        layer_ids = list(range(num_layers)) if moe_layer_ids is None else list(moe_layer_ids)
        if not layer_ids or any(not 0 <= i < num_layers for i in layer_ids):
            raise ValueError(f"moe_layer_ids must be non-empty and within 0..{num_layers - 1}, got {moe_layer_ids}")
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.layer_ids = tuple(layer_ids)
        self.half_life_tokens = float(half_life_tokens)
        self.decay = 0.5 ** (1.0 / half_life_tokens)
        self._lock = threading.Lock()
        self._counts = np.zeros((num_layers, num_experts), dtype=np.float64)
        self._tokens = np.zeros(num_layers, dtype=np.int64)
        self._predicted_hits = 0
        self._predicted_total = 0

    @classmethod
    def for_model(cls, model, half_life_tokens: float = 256.0) -> "RoutingStats":
        """Stats sized for `model` (a KimiModel) and registered on its routing hooks."""
        config = model.config
        stats = cls(config.num_hidden_layers, config.n_routed_experts, list(config.moe_layer_ids), half_life_tokens)
        model.routing_hooks.append(stats)
        return stats

    def detach(self, model) -> None:
        """Remove this observer from `model.routing_hooks`, also while an engine pass holds the hooks back
        (no-op if it is not registered)."""
        remove_routing_hook(model, self)

    # -- the hook (engine thread) --------------------------------------------------------------------
    def __call__(self, layer_idx: int, ids: torch.Tensor, predicted: torch.Tensor | None = None) -> None:
        if not 0 <= layer_idx < self.num_layers:
            raise ValueError(f"layer {layer_idx} is outside 0..{self.num_layers - 1}")
        chosen = np.asarray(ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        if chosen.ndim != 2:
            raise ValueError(f"routing ids must be [tokens, k], got shape {chosen.shape}")
        num_tokens = chosen.shape[0]
        if num_tokens == 0:
            return
        if chosen.min() < 0 or chosen.max() >= self.num_experts:
            raise ValueError(f"routing ids must be in 0..{self.num_experts - 1}")
        added = np.bincount(chosen.reshape(-1), minlength=self.num_experts).astype(np.float64)
        hits = total = 0
        if predicted is not None:
            guess = np.asarray(predicted.detach().cpu().numpy() if isinstance(predicted, torch.Tensor) else predicted)
            if guess.shape[0] == num_tokens:
                # Per token: how many of its chosen experts were among the experts predicted for it.
                hits = int((chosen[:, :, None] == guess[:, None, :]).any(axis=2).sum())
                total = chosen.size
        factor = self.decay ** num_tokens
        with self._lock:
            row = self._counts[layer_idx]
            row *= factor
            row += added
            self._tokens[layer_idx] += num_tokens
            self._predicted_hits += hits
            self._predicted_total += total

    # -- readers (any thread) ------------------------------------------------------------------------
    def counts_at(self, layer_ids, expert_ids) -> np.ndarray:
        """The raw decayed counts at (layer, expert) pairs, indexed like numpy (arrays broadcast); a copy.
        Unlike `load` these are not normalised per layer, so they compare across layers (the GPU tier's heat)."""
        with self._lock:
            return np.array(self._counts[layer_ids, expert_ids], dtype=np.float64)

    def snapshot(self) -> RoutingSnapshot:
        rows = list(self.layer_ids)
        with self._lock:
            counts = self._counts[rows].copy()
            routed = int(self._tokens[rows[0]])
            hits, total = self._predicted_hits, self._predicted_total
        totals = counts.sum(axis=1, keepdims=True)
        load = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        return RoutingSnapshot(
            layer_ids=self.layer_ids, num_experts=self.num_experts, load=load, entropy_bits=entropy_bits(counts),
            routed_tokens=routed, prefetch_recall=hits / total if total else None,
        )

    def reset(self) -> None:
        with self._lock:
            self._counts[:] = 0.0
            self._tokens[:] = 0
            self._predicted_hits = self._predicted_total = 0
