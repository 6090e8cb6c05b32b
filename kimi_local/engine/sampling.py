"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, per-request seeded generators."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6  # Kimi-K2-Instruct's recommended value; 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None
    max_new_tokens: int = 256
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    logprobs: int | None = None  # number of top alternatives to report per token (0: only the chosen one)

    def __post_init__(self) -> None:
        if not (self.temperature >= 0) or self.temperature != self.temperature or self.temperature > 100:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be between 0 and 20, got {self.logprobs}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < 1e-5


@dataclass(frozen=True)
class TokenLogprobs:
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), best first


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> tuple[int, TokenLogprobs | None]:
    """One token from float32 logits [vocab] (on any device; sampling runs on CPU for reproducibility)."""
    logits = logits.float().cpu()
    if params.is_greedy:
        token = int(torch.argmax(logits))
    else:
        scaled = logits / params.temperature
        if params.top_k and params.top_k < scaled.numel():
            kth = torch.topk(scaled, params.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the smallest set reaching top_p
            drop[0] = False  # the best token always stays (a top_p below float32's range would drop all)
            scaled = scaled.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = scaled.softmax(-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
    if params.logprobs is None:
        return token, None
    logp = logits.log_softmax(-1)
    top = ()
    if params.logprobs:
        values, ids = torch.topk(logp, params.logprobs)
        top = tuple((int(i), float(v)) for i, v in zip(ids, values))
    return token, TokenLogprobs(float(logp[token]), top)
