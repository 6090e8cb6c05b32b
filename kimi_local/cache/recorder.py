"""`TraceRecorder`: a routing hook that records what a generation routed, in the trace format of `traces.py`.

Attach it to a model (`model.routing_hooks.append(recorder)`); the model calls it once per MoE layer per
forward step with the step's chosen ids `[N, k]` and the prefetcher's guess for that layer (or None); under an
engine only once the step has succeeded (`engine/pass_records.py`), so a failed and retried step is recorded
once. A step is complete when the last MoE layer has reported; its N tokens are then appended to the current
sequence. The caller says what the tokens are: `phase` (PREFILL while the prompt runs, DECODE after the first generated
token) and `new_sequence()` between prompts. One sequence at a time: batched decoding mixes sequences in a
step, so record with a batch of one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kimi_local.cache.traces import DECODE, PADDING, PREFILL, RoutingTrace, save_trace


class TraceRecorder:
    def __init__(self, moe_layer_ids: list[int], num_experts: int, top_k: int):
        if not moe_layer_ids:
            raise ValueError("TraceRecorder needs at least one MoE layer")
        self.layer_pos = {layer: i for i, layer in enumerate(moe_layer_ids)}
        self.num_experts, self.top_k = num_experts, top_k
        self.phase = PREFILL
        self._seqs: list[tuple[list[np.ndarray], list[np.ndarray], list[int]]] = []
        self._step: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.new_sequence()

    def new_sequence(self) -> None:
        if not self._seqs or self._seqs[-1][2]:
            self._seqs.append(([], [], []))
        self._step = {}
        self.phase = PREFILL

    def __call__(self, layer_idx: int, ids: torch.Tensor, predicted: torch.Tensor | None) -> None:
        pos = self.layer_pos[layer_idx]
        chosen = ids.detach().to("cpu", torch.int16).numpy()
        if chosen.ndim != 2 or chosen.shape[1] != self.top_k:
            raise ValueError(f"routing hook: layer {layer_idx} ids must be [N, {self.top_k}], got {list(chosen.shape)}")
        guess = np.full_like(chosen, -1)
        if predicted is not None:
            p = predicted.detach().to("cpu", torch.int16).numpy()
            if p.shape == chosen.shape:
                guess = p
        if pos == 0:
            self._step = {}
        self._step[pos] = (chosen, guess)
        if pos == len(self.layer_pos) - 1 and len(self._step) == len(self.layer_pos):
            experts, preds, phases = self._seqs[-1]
            experts.append(np.stack([self._step[i][0] for i in range(len(self.layer_pos))], axis=1))  # [N, L, k]
            preds.append(np.stack([self._step[i][1] for i in range(len(self.layer_pos))], axis=1))
            phases += [self.phase] * chosen.shape[0]
            self._step = {}

    def trace(self) -> RoutingTrace:
        seqs = [s for s in self._seqs if s[2]]
        if not seqs:
            raise ValueError("TraceRecorder: nothing was recorded")
        max_len = max(len(s[2]) for s in seqs)
        shape = (len(seqs), max_len, len(self.layer_pos), self.top_k)
        experts = np.full(shape, -1, dtype=np.int16)
        pred = np.full(shape, -1, dtype=np.int16)
        phase = np.full(shape[:2], PADDING, dtype=np.uint8)
        for i, (e, p, ph) in enumerate(seqs):
            n = len(ph)
            experts[i, :n] = np.concatenate(e)
            pred[i, :n] = np.concatenate(p)
            phase[i, :n] = ph
        has_pred = bool((pred >= 0).any())
        return RoutingTrace(experts=experts, phase=phase, num_experts=self.num_experts,
                            pred=pred if has_pred else None)

    def save(self, path: str | Path) -> None:
        save_trace(path, self.trace())


__all__ = ["TraceRecorder", "PREFILL", "DECODE"]
