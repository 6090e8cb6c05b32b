"""The project's eviction policy: evict the expert least likely to be routed to soon.

`ContextPolicy` ranks the evictable residents by the estimate of `context_model.py` (context counts shrunk
toward a prior recognised from earlier contexts, times a recency bonus) and evicts the lowest. Values change
for a key when it is used, and for all keys at once when the model's clock or prior moves (`version`); the
ranking keeps one value per key (+inf for keys that are not evictable) and the minimum of each layer; the
victim is the smallest of the layer minima, after recomputing the minima of the layers touched since the last
eviction (all of them, vectorised, when the values were refreshed). A few microseconds per eviction over the
model's 60 x 384 keys, with nothing per lookup but a scalar update.

`KimiPolicy` guards against traces where this model is wrong (pure recency, shifting working sets): it runs
key-only shadow copies of the context policy and of LRU at the cache's capacity, and evicts by whichever has
had more hits recently (decayed, with hysteresis). On traces where the context policy is better it is the
context policy; where LRU is better it converges to LRU.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from kimi_local.cache.context_model import ContextModel, ContextParams
from kimi_local.cache.policy import EvictionPolicy, LRUPolicy


class ContextPolicy(EvictionPolicy):
    """Evicts the lowest `ContextModel.value`. With `model` given, the model is shared and fed by its owner
    (this policy only ranks); without, the policy owns and feeds its own."""

    name = "context"

    def __init__(self, num_layers: int, num_experts: int, params: ContextParams = ContextParams(),
                 model: ContextModel | None = None):
        super().__init__(num_layers, num_experts)
        if model is not None and (model.num_layers, model.num_experts) != (num_layers, num_experts):
            raise ValueError(f"ContextPolicy: model is sized {model.num_layers} x {model.num_experts}, the "
                             f"policy {num_layers} x {num_experts}")
        self.model = model or ContextModel(num_layers, num_experts, params)
        self._feeds = model is None
        self._value = np.full(self.num_keys, np.inf)  # evictable residents: their value; others +inf
        self._rows = self._value.reshape(num_layers, num_experts)
        self._layer_min = np.full(num_layers, np.inf)  # per layer: the smallest value, at expert _layer_arg
        self._layer_arg = np.zeros(num_layers, dtype=np.int64)
        self._dirty: set[int] = set()  # layers whose minimum may have changed
        self._version = -1

    def begin_step(self, layer_idx, num_tokens):
        if self._feeds:
            self.model.begin_step(layer_idx, num_tokens)

    def _on_access(self, key, weight, evictable):
        if self._feeds:
            self.model.observe(key, weight)
        if evictable:
            self._value[key] = self.model.value(key)
            self._dirty.add(key // self.num_experts)

    def _insert(self, key):
        self._value[key] = self.model.value(key)
        self._dirty.add(key // self.num_experts)

    def _drop(self, key):
        self._value[key] = np.inf
        self._dirty.add(key // self.num_experts)

    def _victim(self):
        """The smallest value: per-layer minima, recomputed for the layers touched since the last call (all
        of them, after the values were refreshed), then the smallest of those."""
        rows, layer_min, layer_arg = self._rows, self._layer_min, self._layer_arg
        if self._version != self.model.version:
            value = self._value
            live = np.flatnonzero(value != np.inf)
            value[live] = self.model.values_at(live)
            self._version = self.model.version
            layer_arg[:] = rows.argmin(axis=1)
            layer_min[:] = rows[np.arange(self.num_layers), layer_arg]
        else:
            for layer in self._dirty:
                row = rows[layer]
                layer_arg[layer] = arg = row.argmin()
                layer_min[layer] = row[arg]
        self._dirty.clear()
        layer = int(layer_min.argmin())
        if layer_min[layer] == np.inf:
            return None
        return layer * self.num_experts + int(layer_arg[layer])

    def seed(self, counts):
        if self._feeds:
            self.model.seed(counts)

    def reset_statistics(self):
        if self._feeds:
            self.model.reset()


class _Shadow:
    """A key-only simulation of one policy at a fixed capacity: counts the hits it would have had."""

    def __init__(self, policy: EvictionPolicy, capacity: int):
        self.policy = policy
        self.capacity = capacity
        self.score = 0.0  # decayed hits

    def access(self, key: int, weight: float, decay: float) -> None:
        p = self.policy
        p.access(key, weight)
        self.score *= decay
        if p.is_resident(key):
            self.score += 1.0
            return
        if len(p) >= self.capacity:
            p.remove(p.victim())
        p.admit(key)


def _sampled(key: int, every: int) -> bool:
    """Spatial sampling (as in SHARDS): a fixed pseudo-random 1/every of the keys feed the shadows."""
    return every == 1 or (key * 2654435761 >> 8) % every == 0


class KimiPolicy(EvictionPolicy):
    """`ContextPolicy` with an LRU fallback chosen by shadow simulation (see the module docstring).

    Without `capacity` (unknown cache size) there are no shadows and it is plain `ContextPolicy` ordering.
    The shadows see a spatial sample of the keys (1 in `capacity // shadow_slots`) at a proportionally
    smaller capacity, which estimates both hit rates at a fraction of the cost; both read the one context
    model, which sees every key.
    """

    name = "kimi_local"

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        top_k: int = 8,
        capacity: int | None = None,
        params: ContextParams | None = None,
        duel_half_life_tokens: float = 50.0,
        duel_margin: float = 0.01,
        shadow_slots: int = 512,
    ):
        super().__init__(num_layers, num_experts)
        self.model = ContextModel(num_layers, num_experts, params or ContextParams(top_k=top_k))
        self.context = ContextPolicy(num_layers, num_experts, model=self.model)  # orders the real cache
        self._lru: OrderedDict[int, None] = OrderedDict()  # the real cache's evictable residents, LRU first
        self.shadows: list[_Shadow] = []
        self._sample_every = 1
        if capacity is not None:
            if capacity < 1:
                raise ValueError(f"KimiPolicy capacity = {capacity} must be >= 1")
            self._sample_every = every = max(1, capacity // max(1, shadow_slots))
            shadow_capacity = max(1, round(capacity / every))
            self.shadows = [
                _Shadow(ContextPolicy(num_layers, num_experts, model=self.model), shadow_capacity),
                _Shadow(LRUPolicy(num_layers, num_experts), shadow_capacity),
            ]
        self._decay = 0.5 ** (1.0 / (duel_half_life_tokens * num_layers * top_k / self._sample_every))
        self._margin = duel_margin / (1.0 - self._decay)  # a hit-rate margin, in decayed-hit units
        self.use_lru = False

    def begin_step(self, layer_idx, num_tokens):
        self.model.begin_step(layer_idx, num_tokens)

    # The context policy sees the same residency and pins as this policy, so it can order the real cache.
    def _on_access(self, key, weight, evictable):
        self.model.observe(key, weight)
        self.context._on_access(key, weight, evictable)
        if evictable:
            self._lru.move_to_end(key)
        if self.shadows and _sampled(key, self._sample_every):
            context_shadow, lru_shadow = self.shadows
            context_shadow.access(key, weight, self._decay)
            lru_shadow.access(key, weight, self._decay)
            if self.use_lru:
                self.use_lru = lru_shadow.score > context_shadow.score
            else:
                self.use_lru = lru_shadow.score > context_shadow.score + self._margin

    def _insert(self, key):
        self._lru[key] = None
        if not self.context.is_resident(key):
            self.context.admit(key)
        else:
            self.context.unpin(key)

    def _drop(self, key):
        del self._lru[key]
        if self._resident[key]:  # being pinned: stays resident in the context policy too
            self.context.pin(key)
        else:
            self.context.remove(key)

    def _victim(self):
        if self.use_lru:
            return next(iter(self._lru), None)
        return self.context._victim()

    def seed(self, counts):
        self.model.seed(counts)

    def reset_statistics(self):
        self.model.reset()
        for shadow in self.shadows:
            shadow.score = 0.0
        self.use_lru = False
