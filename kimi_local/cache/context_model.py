"""How likely the next token is to route to each (layer, expert): the estimate behind the project's eviction policy.

Routing is a per-token draw whose odds depend on the conversation. Keeping the experts with the highest odds
maximises the hit rate when the odds are known (for independent draws the classic optimal online policy, "A0");
they are not known, so this model estimates them online from what the store sees: every layer step's experts
and how many of the step's tokens chose each.

- Context counts: tokens of the current context that chose each expert, decayed with `context_half_life` tokens
  so a long conversation may drift. A context starts with a new prompt: a forward pass with more tokens than the
  pass before it (a prefill chunk after decode steps; later chunks of the same prompt are not larger).
- A prior for the context: after a few hundred tokens a context's own counts are still noisy for any but its
  hottest experts (a rank-80 expert of 384 is chosen by ~1% of tokens). Conversations come back to topics, and a
  topic routes alike each time, so the prior is a mixture of the profiles of earlier contexts (their counts,
  smoothed toward the long-run profile) and the long-run profile itself, each weighted by how well it explains
  the current context's counts (the posterior of a Poisson model; flat until the context's first pass is seen,
  which hedges between the known topics). A matching profile is worth `prior_tokens` tokens of counts; the long
  run, which is all that explains a new topic, only `longrun_prior_tokens`: for a new topic the context's own
  counts are the better guide, and the long run just orders the experts it has not used yet. An ending context
  is merged into the profile that explains it (the same topic again: counts add up) or stored as a new one (at
  most `max_profiles`; the least recently matched goes).
- Recency: an expert used within the last `recent_tokens` tokens is `recent_boost` times likelier to be chosen
  again (consecutive tokens share experts well above chance). Of a prefill step's T tokens, an expert chosen by
  w of them was last used about (T - w) / (w + 1) tokens before the step's end (uses spread evenly).

Estimate (per token, up to a constant): value(e) = (count(e) + sum_j w_j tokens_j rate_j(e)) * boost^recent(e).

Time is counted in tokens: a forward pass (the steps of layers in increasing order) advances the clock by its
tokens. Between passes the values change only for the keys a step touched; at each new pass (recency expiry,
decay; the prior is refreshed at a pass once `refresh_tokens` tokens of routing came in since the last time)
`version` increments, and rankings that cache values recompute them, vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ContextParams:
    top_k: int = 8
    prior_tokens: float = 600.0  # weight of the prior when an earlier context's profile explains this one
    longrun_prior_tokens: float = 2.0  # ... when the long-run profile does (a new topic)
    context_half_life: float = 1000.0  # tokens
    longrun_half_life: float = 8192.0  # tokens
    recent_tokens: float = 4.0
    recent_boost: float = 4.0
    refresh_tokens: float = 8.0
    max_profiles: int = 32
    profile_smoothing: float = 20.0  # tokens of the long-run profile mixed into each stored context profile
    min_profile_tokens: float = 16.0  # shorter contexts are not stored
    carry: float = 0.0  # share of the context counts kept when a new context starts
    merge_posterior: float = 0.99  # an ending context joins the stored profile this sure to explain it

    def validate(self) -> None:
        positive = ("top_k", "context_half_life", "longrun_half_life", "refresh_tokens", "profile_smoothing")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"ContextParams.{name} = {getattr(self, name)} must be > 0")
        for name in ("prior_tokens", "longrun_prior_tokens", "recent_tokens", "min_profile_tokens", "max_profiles"):
            if getattr(self, name) < 0:
                raise ValueError(f"ContextParams.{name} = {getattr(self, name)} must be >= 0")
        if self.recent_boost < 1:
            raise ValueError(f"ContextParams.recent_boost = {self.recent_boost} must be >= 1")
        if not 0 <= self.carry <= 1:
            raise ValueError(f"ContextParams.carry = {self.carry} must lie in [0, 1]")


class ContextModel:
    """The statistics only (no residency): shared by the policy that orders the real cache and its shadow."""

    def __init__(self, num_layers: int, num_experts: int, params: ContextParams = ContextParams()):
        params.validate()
        self.p = params
        self.num_layers, self.num_experts = num_layers, num_experts
        self.num_keys = num_layers * num_experts
        self.uniform_rate = min(1.0, params.top_k / num_experts)
        self._log_boost = math.log(params.recent_boost)
        self._clear()
        self._clear_profiles()
        self._refresh_evidence = params.refresh_tokens * params.top_k * num_layers
        self._last_layer = math.inf
        self._pass_tokens = 0.0
        self._step_tokens = 1.0
        self.version = 0
        self.num_contexts = 0

    def _clear(self) -> None:
        n = self.num_keys
        # Decayed sums are kept scaled by 2^(now / half-life): a sum then changes only when its key is used.
        self.now = 0.0
        self._ctx_scale = self._long_scale = 1.0
        self._ctx = np.zeros(n)
        self._ctx_tokens = 0.0
        self._long = np.zeros(n)
        self._long_tokens = 0.0
        self._last = np.full(n, -math.inf)
        self._prior = np.full(n, self.p.longrun_prior_tokens * self.uniform_rate)  # pseudo-counts
        self._evidence = math.inf  # routing observed since the prior was refreshed (weights)

    def _clear_profiles(self) -> None:
        n = self.num_keys
        self._profile_counts = np.empty((0, n))  # [profiles, keys]: tokens that chose each key
        self._profile_tokens = np.empty(0)  # [profiles]
        self._profile_rates = np.empty((0, n))  # smoothed per-token rates, and their logs
        self._profile_logs = np.empty((0, n))
        self._profile_used = np.empty(0)  # clock when last stored or merged into

    # -- what the store (or simulator) reports -------------------------------------------------------------
    def begin_step(self, layer_idx: int, num_tokens: float) -> None:
        """A layer step of `num_tokens` tokens starts (before its experts are looked up)."""
        num_tokens = float(max(num_tokens, 1))
        self._step_tokens = num_tokens
        if layer_idx <= self._last_layer:  # a new forward pass
            if num_tokens > max(1.0, self._pass_tokens):
                self._new_context()
            self._advance(num_tokens)
            self._pass_tokens = num_tokens
            if self._evidence >= self._refresh_evidence:
                self._refresh_prior()
        self._last_layer = layer_idx

    def observe(self, key: int, weight: float) -> None:
        """A lookup of `key` that `weight` of the step's tokens chose."""
        w = min(max(weight, 0.0), self._step_tokens)
        self._ctx[key] += w * self._ctx_scale
        self._long[key] += w * self._long_scale
        self._evidence += w
        if w > 0:
            self._last[key] = max(self._last[key], self.now - (self._step_tokens - w) / (w + 1.0))

    def seed(self, counts: np.ndarray, tokens: float | None = None) -> None:
        """Add known long-run usage (a routing profile): `counts[key]` tokens chose key over `tokens` tokens
        (default: as many as one layer's counts imply)."""
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if counts.shape != (self.num_keys,):
            raise ValueError(f"seed: counts must have {self.num_keys} entries, got {counts.shape[0]}")
        if tokens is None:
            per_layer = counts.reshape(self.num_layers, self.num_experts).sum(axis=1)
            tokens = float(per_layer.max()) / self.p.top_k
        self._long += np.maximum(counts, 0.0) * self._long_scale
        self._long_tokens += max(tokens, 0.0) * self._long_scale
        self._refresh_prior()

    def reset(self) -> None:
        """Forget everything learnt (contexts, profiles, long-run counts)."""
        self._clear()
        self._clear_profiles()
        self._last_layer = math.inf
        self._pass_tokens = 0.0
        self.version += 1

    # -- the estimate --------------------------------------------------------------------------------------
    def value(self, key: int) -> float:
        """Relative odds that the next token routes to `key` (comparable across keys and layers)."""
        v = self._ctx[key] / self._ctx_scale + self._prior[key]
        if self.now - self._last[key] <= self.p.recent_tokens:
            v *= self.p.recent_boost
        return v

    def values_at(self, keys: np.ndarray) -> np.ndarray:
        v = self._ctx[keys] / self._ctx_scale + self._prior[keys]
        recent = (self.now - self._last[keys]) <= self.p.recent_tokens
        return np.where(recent, v * self.p.recent_boost, v)

    def context_count(self, key: int) -> float:
        """Tokens of the current context that chose `key`, decayed to now."""
        return float(self._ctx[key] / self._ctx_scale)

    def longrun_count(self, key: int) -> float:
        return float(self._long[key] / self._long_scale)

    @property
    def num_profiles(self) -> int:
        return self._profile_counts.shape[0]

    # -- internals -----------------------------------------------------------------------------------------
    def _advance(self, tokens: float) -> None:
        self.now += tokens
        self._ctx_scale *= 2.0 ** (tokens / self.p.context_half_life)
        self._long_scale *= 2.0 ** (tokens / self.p.longrun_half_life)
        self._ctx_tokens += tokens * self._ctx_scale
        self._long_tokens += tokens * self._long_scale
        if self._ctx_scale > 1e100:
            self._ctx /= self._ctx_scale
            self._ctx_tokens /= self._ctx_scale
            self._ctx_scale = 1.0
        if self._long_scale > 1e100:
            self._long /= self._long_scale
            self._long_tokens /= self._long_scale
            self._long_scale = 1.0
        self.version += 1

    def _longrun_rates(self) -> np.ndarray:
        """Per-token rate of each key over the long run, with one token of the uniform rate mixed in."""
        tokens = self._long_tokens / self._long_scale
        return (self._long / self._long_scale + self.uniform_rate) / (tokens + 1.0)

    def _new_context(self) -> None:
        """Store the ending context as a profile: merged into the stored profile that explains it (the same
        topic again, whose counts then add up), else as a new one (the least recently matched one goes)."""
        tokens = self._ctx_tokens / self._ctx_scale
        if tokens >= self.p.min_profile_tokens and self.p.max_profiles > 0:
            counts = self._ctx / self._ctx_scale
            w = self._posterior(counts, self._longrun_rates())
            best = int(w.argmax())
            if best > 0 and w[best] >= self.p.merge_posterior:
                row = best - 1
                self._profile_counts[row] += counts
                self._profile_tokens[row] += tokens
            elif self.num_profiles < self.p.max_profiles:
                row = self.num_profiles
                self._profile_counts = np.concatenate([self._profile_counts, counts[None]])
                self._profile_tokens = np.append(self._profile_tokens, tokens)
                self._profile_rates = np.concatenate([self._profile_rates, counts[None]])
                self._profile_logs = np.concatenate([self._profile_logs, counts[None]])
                self._profile_used = np.append(self._profile_used, 0.0)
            else:
                row = int(self._profile_used.argmin())
                self._profile_counts[row] = counts
                self._profile_tokens[row] = tokens
            self._profile_used[row] = self.now
            self._smooth_profile(row)
        self._ctx *= self.p.carry
        self._ctx_tokens *= self.p.carry
        self.num_contexts += 1
        self._evidence = math.inf  # refresh the prior at the step that starts it

    def _smooth_profile(self, row: int) -> None:
        a = self.p.profile_smoothing
        rates = (self._profile_counts[row] + a * self._longrun_rates()) / (self._profile_tokens[row] + a)
        self._profile_rates[row] = rates
        self._profile_logs[row] = np.log(rates)

    def _posterior(self, counts: np.ndarray, longrun: np.ndarray) -> np.ndarray:
        """Weights of [long run, profile 0, profile 1, ...] given the context's counts (Poisson likelihood,
        flat prior over the components; every component's rates sum to top_k per layer)."""
        log_lik = np.empty(self.num_profiles + 1)
        log_lik[0] = counts @ np.log(longrun)
        log_lik[1:] = self._profile_logs @ counts
        w = np.exp(log_lik - log_lik.max())
        return w / w.sum()

    def _refresh_prior(self) -> None:
        """prior = posterior-weighted mixture of the long-run profile and the stored context profiles."""
        longrun = self._longrun_rates()
        if self.num_profiles == 0:
            self._prior = self.p.longrun_prior_tokens * longrun
        else:
            w = self._posterior(self._ctx / self._ctx_scale, longrun)
            profiles = w[1:] @ self._profile_rates
            self._prior = (self.p.longrun_prior_tokens * w[0]) * longrun + self.p.prior_tokens * profiles
        self._evidence = 0.0
        self.version += 1
