"""Eviction policies: which cached expert to drop when a slot is needed.

One small protocol serves both the trace simulator and the real expert store, so what the benchmark measures
is the code that runs. Keys are ints, `layer * num_experts + expert` (`expert_key`), so per-key state lives in
flat lists over the model's (small: 60 x 384) key universe instead of dicts.

The store (or simulator) drives a policy like this, per layer step and for each expert the step needs:

    policy.begin_step(layer, n)     # once per layer step, before its lookups: n = the step's tokens
    policy.access(key, weight)      # every lookup, hit or miss; weight = tokens that chose it (router mass)
    if miss:
        if full: old = policy.victim(); policy.remove(old)    # evict
        policy.admit(key)
    policy.pin(key) ... policy.unpin(key)                    # while a kernel reads it (refcounted)

A pinned key is never a victim: pinning takes it out of the eviction order, unpinning puts it back. Keys may
be pinned before they are resident (a configured pin list); they enter the cache pinned.

Policies here: `LRUPolicy`, `LFUPolicy` (perfect LFU: counts survive eviction) and `KimiPolicy` (the project's,
in `kimi_policy.py`, over the estimate of `context_model.py`). Each keeps its evictable residents in an ordered
structure: O(1) or O(log n) updates, or (the context policy) a value per key and one vectorised argmin per eviction.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

import numpy as np


class PolicyError(RuntimeError):
    """The policy was driven against its protocol (e.g. a victim asked for when everything is pinned)."""


def expert_key(layer_idx: int, expert_id: int, num_experts: int) -> int:
    return layer_idx * num_experts + expert_id


def split_key(key: int, num_experts: int) -> tuple[int, int]:
    return divmod(key, num_experts)


class EvictionPolicy:
    """Residency and pin bookkeeping shared by all policies; subclasses order the evictable residents."""

    name = "base"

    def __init__(self, num_layers: int, num_experts: int):
        if num_layers < 1 or num_experts < 1:
            raise ValueError(f"policy needs num_layers >= 1 and num_experts >= 1, got {num_layers}, {num_experts}")
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.num_keys = num_layers * num_experts
        self._resident = bytearray(self.num_keys)
        self._pins = [0] * self.num_keys
        self._num_resident = 0

    # -- the protocol ------------------------------------------------------------------------------------
    def access(self, key: int, weight: float = 1.0) -> None:
        self._check(key)
        self._on_access(key, weight, self._resident[key] and not self._pins[key])

    def admit(self, key: int) -> None:
        self._check(key)
        if self._resident[key]:
            raise PolicyError(f"admit: key {self._name(key)} is already resident")
        self._resident[key] = 1
        self._num_resident += 1
        if not self._pins[key]:
            self._insert(key)

    def remove(self, key: int) -> None:
        self._check(key)
        if not self._resident[key]:
            raise PolicyError(f"remove: key {self._name(key)} is not resident")
        if self._pins[key]:
            raise PolicyError(f"remove: key {self._name(key)} is pinned")
        self._resident[key] = 0
        self._num_resident -= 1
        self._drop(key)

    def victim(self) -> int:
        """The evictable resident to drop next (not removed: call `remove`)."""
        key = self._victim()
        if key is None:
            raise PolicyError(f"victim: all {self._num_resident} resident experts are pinned")
        return key

    def pin(self, key: int) -> None:
        self._check(key)
        self._pins[key] += 1
        if self._pins[key] == 1 and self._resident[key]:
            self._drop(key)

    def unpin(self, key: int) -> None:
        self._check(key)
        if not self._pins[key]:
            raise PolicyError(f"unpin: key {self._name(key)} is not pinned")
        self._pins[key] -= 1
        if not self._pins[key] and self._resident[key]:
            self._insert(key)

    def begin_step(self, layer_idx: int, num_tokens: float) -> None:
        """A layer step over `num_tokens` tokens begins. Policies without a notion of time ignore it."""

    def seed(self, counts: "np.ndarray") -> None:
        """Start from known usage (a routing profile): `counts[key]` tokens, flat over all keys. Policies
        without statistics ignore it."""

    def reset_statistics(self) -> None:
        """Forget all usage history (residency and pins stay)."""

    def is_resident(self, key: int) -> bool:
        return bool(self._resident[key])

    def is_pinned(self, key: int) -> bool:
        return self._pins[key] > 0

    def __len__(self) -> int:
        return self._num_resident

    def resident_keys(self) -> list[int]:
        return [k for k in range(self.num_keys) if self._resident[k]]

    # -- what subclasses provide ---------------------------------------------------------------------------
    def _on_access(self, key: int, weight: float, evictable: bool) -> None:
        raise NotImplementedError

    def _insert(self, key: int) -> None:
        """`key` became evictable (admitted unpinned, or unpinned)."""
        raise NotImplementedError

    def _drop(self, key: int) -> None:
        """`key` stopped being evictable (removed, or pinned)."""
        raise NotImplementedError

    def _victim(self) -> int | None:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------------------
    def _check(self, key: int) -> None:
        if not 0 <= key < self.num_keys:
            raise PolicyError(f"key {key} outside [0, {self.num_keys}) ({self.num_layers} layers x {self.num_experts})")

    def _name(self, key: int) -> str:
        layer, expert = split_key(key, self.num_experts)
        return f"(layer {layer}, expert {expert})"


class LRUPolicy(EvictionPolicy):
    """Least recently used: the baseline every other policy must beat."""

    name = "lru"

    def __init__(self, num_layers: int, num_experts: int):
        super().__init__(num_layers, num_experts)
        self._order: OrderedDict[int, None] = OrderedDict()  # evictable residents, oldest first

    def _on_access(self, key, weight, evictable):
        if evictable:
            self._order.move_to_end(key)

    def _insert(self, key):
        self._order[key] = None

    def _drop(self, key):
        del self._order[key]

    def _victim(self):
        return next(iter(self._order), None)


class HeapPolicy(EvictionPolicy):
    """Evicts the evictable resident with the smallest priority; priorities change only when a key is
    accessed (the subclass computes them), so a heap with lazy deletion keeps every step O(log n)."""

    def __init__(self, num_layers: int, num_experts: int):
        super().__init__(num_layers, num_experts)
        self._heap: list[tuple[float, int, int]] = []  # (priority, stamp, key)
        self._stamp = [0] * self.num_keys  # 0: not in the heap; else the stamp of its live entry
        self._num_pushed = 0
        self._num_live = 0

    def _priority(self, key: int) -> float:
        raise NotImplementedError

    def _push(self, key: int) -> None:
        self._num_pushed += 1
        self._stamp[key] = self._num_pushed
        heapq.heappush(self._heap, (self._priority(key), self._num_pushed, key))
        if len(self._heap) > 4 * self._num_live + 256:
            self._compact()

    def _rekey(self) -> None:
        """Priorities changed wholesale: rebuild the heap from the evictable residents."""
        live = [k for k in range(self.num_keys) if self._stamp[k]]
        self._heap = []
        for key in live:
            self._push(key)

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if self._stamp[e[2]] == e[1]]
        heapq.heapify(self._heap)

    def _on_access(self, key, weight, evictable):
        self._record(key, weight)
        if evictable:
            self._push(key)

    def _record(self, key: int, weight: float) -> None:
        raise NotImplementedError

    def _insert(self, key):
        self._num_live += 1
        self._push(key)

    def _drop(self, key):
        self._num_live -= 1
        self._stamp[key] = 0

    def _victim(self):
        heap = self._heap
        while heap:
            _, stamp, key = heap[0]
            if self._stamp[key] == stamp:
                return key
            heapq.heappop(heap)
        return None


class LFUPolicy(HeapPolicy):
    """Least frequently used, with counts kept for every key ever seen (perfect LFU); ties go to the least
    recently used. Strong on stationary skew, blind to shifts."""

    name = "lfu"

    def __init__(self, num_layers: int, num_experts: int):
        super().__init__(num_layers, num_experts)
        self._count = [0] * self.num_keys

    def _record(self, key, weight):
        self._count[key] += 1

    def _priority(self, key):
        return self._count[key]

    def seed(self, counts):
        self._count = [c + float(n) for c, n in zip(self._count, np.asarray(counts, dtype=np.float64).tolist())]
        self._rekey()

    def reset_statistics(self):
        self._count = [0] * self.num_keys
        self._rekey()
