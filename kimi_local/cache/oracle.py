"""An online bound for synthetic traces: the eviction policy that knows the generator's hidden state.

OPT knows the future draws themselves, which no policy can; an online policy can at best know the
probabilities the draws come from. For a synthetic trace those are known: each sequence's sampling weights
(`synthesize_trace_with_probs`) times the recency boost for experts used within the locality window. Evicting
the resident expert with the smallest such weight (the classic A0 rule) approximates the best any online policy
can do on that trace, so it says how much of the LRU-to-OPT gap is reachable at all. Not a real policy: it
reads the stream's sequence boundaries and the hidden weights. Slow (a numpy argmin per eviction).

With `protect_next` it also knows the next layer step's experts exactly (a perfect prefetch prediction, which
the engine has only approximately: the next layer's router applied early) and never evicts them: what the
prediction could add to the hit rate at most.
"""

from __future__ import annotations

import numpy as np

from kimi_local.cache.policy import EvictionPolicy
from kimi_local.cache.simulate import AccessStream
from kimi_local.cache.traces import TraceSpec


class SequenceOracle(EvictionPolicy):
    name = "oracle_a0"

    def __init__(self, stream: AccessStream, probs: np.ndarray, spec: TraceSpec, protect_next: bool = False):
        super().__init__(stream.num_layers, stream.num_experts)
        if probs.shape[1:] != (stream.num_layers, stream.num_experts):
            raise ValueError(f"probs {list(probs.shape)} do not match the stream's "
                             f"{stream.num_layers} layers x {stream.num_experts} experts")
        self._seq = np.repeat(stream.group_seq, np.diff(stream.group_starts))  # sequence of each access
        self._probs = probs.reshape(probs.shape[0], -1)
        self._window = spec.locality_window * spec.num_layers * spec.top_k  # the window, in accesses
        self._boost = spec.locality_boost
        self._evictable = np.zeros(self.num_keys, dtype=bool)
        self._last = np.full(self.num_keys, -np.inf)
        self._last_seq = np.full(self.num_keys, -1)
        self._pos = -1
        self._protect_next = protect_next
        if protect_next:
            self.name = "oracle_a0_next"
            self._keys = stream.keys
            self._starts = stream.group_starts
            self._group = np.repeat(np.arange(stream.group_phase.size), np.diff(stream.group_starts))

    def _on_access(self, key, weight, evictable):
        self._pos += 1
        self._last[key] = self._pos
        self._last_seq[key] = self._seq[self._pos]

    def _insert(self, key):
        self._evictable[key] = True

    def _drop(self, key):
        self._evictable[key] = False

    def _victim(self):
        idx = np.flatnonzero(self._evictable)
        if self._protect_next and idx.size:
            g = self._group[max(self._pos, 0)] + 1
            if g + 1 < self._starts.size:
                free = ~np.isin(idx, self._keys[self._starts[g] : self._starts[g + 1]])
                idx = idx[free] if free.any() else idx
        if idx.size == 0:
            return None
        seq = self._seq[max(self._pos, 0)]
        recent = (self._pos - self._last[idx] <= self._window) & (self._last_seq[idx] == seq)
        weight = self._probs[seq, idx] * np.where(recent, self._boost, 1.0)
        return int(idx[np.argmin(weight)])
