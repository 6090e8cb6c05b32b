"""The project's eviction policy: evict the expert least likely to be routed to soon.

Routing is a per-token draw: in the current context each expert of a layer has some probability p of being
among the layer's top-k for the next token. Keeping the experts with the highest p maximises the hit rate
when p is known (for independent draws this is the classic optimal online policy, "A0"). The policy
estimates p from two statistics of each (layer, expert):

- frequency: an exponentially decayed count of the tokens that chose it (half-life `half_life_tokens`), so it
  follows the topic of the current conversation and forgets old ones; a prefill chunk counts every token
  that chose the expert, which is how the prompt primes the cache for the answer;
- recency: an expert used in the last `recent_tokens` tokens is `recent_boost` times likelier to be used
  again (routing studies see consecutive tokens share experts well above chance).

Priority = log2(decayed count) + log2(recent_boost) if recent. Decayed counts are kept in the log domain,
S = log2(sum_j w_j 2^(t_j / h)): every key decays at the same rate, so comparing S compares the decayed counts
at any time, and S changes only when its key is accessed. A key's priority therefore changes only on access
or when its recency bonus expires (a FIFO of access times finds those), and a heap with lazy deletion gives
O(log n) per operation. Counts are kept for every key ever seen (the universe is only layers x experts), so
an expert that returns after eviction keeps its history: a prefill scan cannot flush the hot set.

`KimiPolicy` guards against traces where this model is wrong (pure recency, shifting working sets): it runs
key-only shadow copies of the score policy and of LRU at the cache's capacity, and evicts by whichever has
had more hits recently (decayed, with hysteresis). On traces where the score policy is better it is the score
policy; where LRU is better it converges to LRU.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

import numpy as np

from kimi_local.cache.policy import EvictionPolicy, HeapPolicy, LRUPolicy


class ScorePolicy(HeapPolicy):
    """Decayed frequency x recency bonus (see the module docstring)."""

    name = "score"

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        top_k: int = 8,
        half_life_tokens: float = 100.0,
        recent_tokens: float = 4.0,
        recent_boost: float = 4.0,
    ):
        super().__init__(num_layers, num_experts)
        if half_life_tokens <= 0 or recent_tokens < 0 or recent_boost < 1 or top_k < 1:
            raise ValueError(
                f"ScorePolicy needs half_life_tokens > 0, recent_tokens >= 0, recent_boost >= 1, top_k >= 1; got "
                f"{half_life_tokens}, {recent_tokens}, {recent_boost}, {top_k}"
            )
        accesses_per_token = num_layers * top_k  # the clock counts accesses; a decode token makes L * k
        self.half_life = half_life_tokens * accesses_per_token
        self.recent_window = recent_tokens * accesses_per_token
        self.log2_boost = math.log2(recent_boost)
        self.clock = 0
        self.log_count = [-math.inf] * self.num_keys  # S above; -inf = never seen
        self.last_access = [-math.inf] * self.num_keys
        self._recent: deque[tuple[int, int]] = deque()  # (clock at access, key), oldest first

    def _record(self, key: int, weight: float) -> None:
        clock = self.clock = self.clock + 1
        a = clock / self.half_life
        if weight != 1.0:
            a = a + math.log2(weight) if weight > 0 else -math.inf
        s = self.log_count[key]
        if s == -math.inf:  # log2(2^s + 2^a), without overflow
            self.log_count[key] = a
        elif s >= a:
            self.log_count[key] = s + math.log2(1.0 + 2.0 ** (a - s))
        else:
            self.log_count[key] = a + math.log2(1.0 + 2.0 ** (s - a))
        self.last_access[key] = clock
        self._recent.append((clock, key))

    def _priority(self, key: int) -> float:
        if self.clock - self.last_access[key] <= self.recent_window:
            return self.log_count[key] + self.log2_boost
        return self.log_count[key]

    def _expire(self) -> None:
        """Keys whose recency bonus ran out get their lower priority pushed."""
        horizon = self.clock - self.recent_window
        recent, stamp, last = self._recent, self._stamp, self.last_access
        while recent and recent[0][0] < horizon:
            t, key = recent.popleft()
            if last[key] == t and stamp[key]:  # not accessed since, and evictable: re-key it
                self._push(key)

    def _victim(self):
        self._expire()
        return super()._victim()

    def seed(self, counts):
        now = self.clock / self.half_life
        for key, n in enumerate(np.asarray(counts, dtype=np.float64).tolist()):
            if n > 0:
                a = math.log2(n) + now
                s = self.log_count[key]
                hi, lo = (s, a) if s >= a else (a, s)
                self.log_count[key] = hi + math.log2(1.0 + 2.0 ** (lo - hi)) if lo > -math.inf else hi
        self._rekey()

    def reset_statistics(self):
        self.log_count = [-math.inf] * self.num_keys
        self.last_access = [-math.inf] * self.num_keys
        self._recent.clear()
        self._rekey()

    def decayed_count(self, key: int) -> float:
        """Tokens that chose `key`, decayed to now (half-life in tokens)."""
        s = self.log_count[key]
        return 0.0 if s == -math.inf else 2.0 ** (s - self.clock / self.half_life)


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
    """`ScorePolicy` with an LRU fallback chosen by shadow simulation (see the module docstring).

    Without `capacity` (unknown cache size) there are no shadows and it is plain `ScorePolicy` ordering.
    The shadows see a spatial sample of the keys (1 in `capacity // shadow_slots`) at a proportionally
    smaller capacity, which estimates both hit rates at a fraction of the cost.
    """

    name = "kimi_local"

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        top_k: int = 8,
        capacity: int | None = None,
        half_life_tokens: float = 100.0,
        recent_tokens: float = 4.0,
        recent_boost: float = 4.0,
        duel_half_life_tokens: float = 50.0,
        duel_margin: float = 0.01,
        shadow_slots: int = 512,
    ):
        super().__init__(num_layers, num_experts)
        params = dict(top_k=top_k, half_life_tokens=half_life_tokens, recent_tokens=recent_tokens,
                      recent_boost=recent_boost)
        self.score = ScorePolicy(num_layers, num_experts, **params)  # orders the real cache
        self._lru: OrderedDict[int, None] = OrderedDict()  # the real cache's evictable residents, LRU first
        self.shadows: list[_Shadow] = []
        self._sample_every = 1
        if capacity is not None:
            if capacity < 1:
                raise ValueError(f"KimiPolicy capacity = {capacity} must be >= 1")
            self._sample_every = every = max(1, capacity // max(1, shadow_slots))
            shadow_capacity = max(1, round(capacity / every))
            # The shadow's clock only ticks on sampled keys: scale its windows to the same token spans.
            shadow_params = dict(params, half_life_tokens=half_life_tokens / every, recent_tokens=recent_tokens / every)
            self.shadows = [
                _Shadow(ScorePolicy(num_layers, num_experts, **shadow_params), shadow_capacity),
                _Shadow(LRUPolicy(num_layers, num_experts), shadow_capacity),
            ]
        self._decay = 0.5 ** (1.0 / (duel_half_life_tokens * num_layers * top_k / self._sample_every))
        self._margin = duel_margin / (1.0 - self._decay)  # a hit-rate margin, in decayed-hit units
        self.use_lru = False

    # The score policy sees the same residency and pins as this policy, so it can order the real cache.
    def _on_access(self, key, weight, evictable):
        self.score._on_access(key, weight, evictable)  # same residency and pins as ours, key checked
        if evictable:
            self._lru.move_to_end(key)
        if self.shadows and _sampled(key, self._sample_every):
            score_shadow, lru_shadow = self.shadows
            score_shadow.access(key, weight, self._decay)
            lru_shadow.access(key, weight, self._decay)
            if self.use_lru:
                self.use_lru = lru_shadow.score > score_shadow.score
            else:
                self.use_lru = lru_shadow.score > score_shadow.score + self._margin

    def _insert(self, key):
        self._lru[key] = None
        if not self.score.is_resident(key):
            self.score.admit(key)
        else:
            self.score.unpin(key)

    def _drop(self, key):
        del self._lru[key]
        if self._resident[key]:  # being pinned: stays resident in the score policy too
            self.score.pin(key)
        else:
            self.score.remove(key)

    def _victim(self):
        if self.use_lru:
            return next(iter(self._lru), None)
        return self.score._victim()

    def decayed_count(self, key: int) -> float:
        return self.score.decayed_count(key)

    def seed(self, counts):
        self.score.seed(counts)
        for shadow in self.shadows:
            shadow.policy.seed(counts)

    def reset_statistics(self):
        self.score.reset_statistics()
        for shadow in self.shadows:
            shadow.policy.reset_statistics()
            shadow.score = 0.0
        self.use_lru = False
