"""The engine: prompt token ids in, generated token ids out, for many requests at once.

Scheduling follows nano-vllm's split: requests wait in a queue until a KV slot is free; a running request first
prefills its prompt in chunks of `prefill_chunk` tokens (one chunk per step, so a long prompt never builds a full
score matrix; chunks alternate with decode steps, so it never stalls the running streams), then decodes. A decode
step produces one token for every request past its prompt in a single forward pass (continuous batching), so each
MoE layer reads its experts once per step for all of them.

Prefix reuse. A slot's KV rows stay valid after its request ends, so a new request whose prompt starts with
tokens a slot already holds (the next turn of a chat resends the whole conversation; `n > 1` sends one prompt n
times) skips them: it takes the free slot holding the longest common prefix, or copies the rows from a running
request that holds one, and prefills only the rest (always at least its last token, whose logits it needs).

Failures. A forward pass that raises (an expert that cannot be read) is retried: a prefill chunk once, a decode
batch request by request, so a fault fails only the requests that still meet it. The routing a pass reports
(statistics, trace, the store's profile) is held back until the pass succeeds (`pass_records.py`), so work done
twice is recorded once.

`step()` does one forward pass and returns what it produced. It is not thread-safe by itself; `add_request` and
`abort` are, so a server thread can run `step()` in a loop while other threads submit and cancel.
`generate()` is the synchronous single-request stream used by the CLI.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from kimi_local.engine.pass_records import PassRecords
from kimi_local.engine.sampling import SamplingParams, TokenLogprobs, make_generator, sample
from kimi_local.model.deepseek import Batch, KimiModel, KVCache

log = logging.getLogger(__name__)


class ContextLengthError(ValueError):
    """The prompt does not fit the configured context."""


class EngineError(RuntimeError):
    """A request failed inside the engine (the engine itself keeps serving)."""


@dataclass
class Request:
    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    output_ids: list[int] = field(default_factory=list)
    slot: int | None = None
    num_prefilled: int = 0
    num_cached: int = 0  # prompt tokens whose KV rows were reused rather than computed
    finish_reason: str | None = None  # "stop", "length", "abort", "error"
    error: str | None = None
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class StepOutput:
    request_id: int
    token_id: int | None  # None when the request ended without a new token (abort, error)
    logprobs: TokenLogprobs | None
    finish_reason: str | None
    error: str | None = None
    cached_prompt_tokens: int | None = None  # on a request's first token: prompt tokens reused, not computed


@dataclass
class EngineStats:
    prompt_tokens: int = 0  # prompt tokens computed by prefill
    cached_prompt_tokens: int = 0  # prompt tokens whose KV rows were reused instead
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    finished_requests: int = 0
    failed_requests: int = 0


class Engine:
    def __init__(self, model: KimiModel, max_context: int = 4096, max_batch: int = 8, prefill_chunk: int = 512):
        if max_context < 2:
            raise ValueError("max_context must be at least 2")
        if max_context > model.config.max_position_embeddings:
            raise ValueError(f"engine.max_context {max_context} exceeds the model's max_position_embeddings "
                             f"{model.config.max_position_embeddings} (config.json)")
        self.model = model
        self.config = model.config
        self.max_context = max_context
        self.max_batch = max_batch
        self.prefill_chunk = max(1, prefill_chunk)
        self.cache = KVCache.allocate(model.config, max_batch, max_context, model.dtype,
                                    model.placement.layer_devices)
        # Decode steps go through the model's decode runner (CUDA graphs) when it offers one for this cache;
        # stand-in models in tests have none.
        make_runner = getattr(model, "decode_runner", None)
        self._decode_runner = make_runner(self.cache) if make_runner is not None else None
        self._records = PassRecords(model)  # routing records of a pass count only once the pass succeeds
        self.stats = EngineStats()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._incoming: deque[Request] = deque()
        self._aborted: set[int] = set()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._free_slots = list(range(max_batch - 1, -1, -1))
        self._slot_tokens: list[list[int]] = [[] for _ in range(max_batch)]  # free slots: ids of their valid rows
        self._last_was_prefill = False  # prefill chunks and decode steps alternate when both are due

    # -- intake (thread-safe) ------------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> Request:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        vocab = self.config.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= int(t) < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary (size {vocab})")
        if len(prompt_ids) >= self.max_context:
            raise ContextLengthError(
                f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_context} "
                f"(prompt plus at least one generated token)"
            )
        request = Request(next(self._ids), [int(t) for t in prompt_ids], params, make_generator(params.seed))
        with self._lock:
            self._incoming.append(request)
        return request

    def abort(self, request_id: int) -> None:
        with self._lock:
            self._aborted.add(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._incoming or self._aborted or self._waiting or self._running)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self._incoming)

    # -- scheduling ----------------------------------------------------------------------------------------
    def _finish(self, request: Request, reason: str, error: str | None = None) -> None:
        # Counted before the request leaves `_running`: a reader that sees it gone sees it counted.
        self.stats.finished_requests += 1
        if reason == "error":
            self.stats.failed_requests += 1
        request.finish_reason = reason
        request.error = error
        if request.slot is not None:
            # a failed pass may have left rows half written: keep none of that slot's rows for reuse
            self._slot_tokens[request.slot] = [] if reason == "error" else self._cached_tokens(request)
            self._free_slots.append(request.slot)
            request.slot = None
        if request in self._running:
            self._running.remove(request)

    def _intake(self) -> list[StepOutput]:
        outputs = []
        with self._lock:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
            aborted, self._aborted = self._aborted, set()
        if aborted:
            for request in [r for r in itertools.chain(self._waiting, self._running) if r.request_id in aborted]:
                if request in self._waiting:
                    self._waiting.remove(request)
                self._finish(request, "abort")
                outputs.append(StepOutput(request.request_id, None, None, "abort"))
        while self._waiting and self._free_slots:
            request = self._waiting.popleft()
            self._assign_slot(request)
            self._running.append(request)
        return outputs

    # -- prefix reuse --------------------------------------------------------------------------------------
    @staticmethod
    def _cached_tokens(request: Request) -> list[int]:
        """The ids whose KV rows `request`'s slot holds: its prefilled prompt, and once decoding every token but
        the last sampled one (a token's row is written when it is the input of the next step)."""
        if not request.output_ids:
            return request.prompt_ids[: request.num_prefilled]
        return request.prompt_ids + request.output_ids[:-1]

    @staticmethod
    def _reusable(prompt: list[int], tokens: list[int]) -> int:
        """Length of the common prefix of `prompt` and `tokens`, leaving the prompt's last token to compute."""
        limit = min(len(prompt) - 1, len(tokens))
        n = 0
        while n < limit and prompt[n] == tokens[n]:
            n += 1
        return n

    def _assign_slot(self, request: Request) -> None:
        """The free slot holding the longest prefix of the prompt; among equals one holding less (keeping longer
        contexts for a later turn), then the most recently freed."""
        reuse, _, best = max((self._reusable(request.prompt_ids, self._slot_tokens[slot]),
                              -len(self._slot_tokens[slot]), i) for i, slot in enumerate(self._free_slots))
        request.slot = self._free_slots.pop(best)
        self._slot_tokens[request.slot] = []
        self._skip_prefix(request, reuse)

    def _copy_prefix_from_running(self, request: Request) -> None:
        """Before prefilling, take rows that another running request already holds (its slot stays its own)."""
        best, donor = request.num_prefilled, None
        for other in self._running:
            if other is not request and other.slot is not None:
                n = self._reusable(request.prompt_ids, self._cached_tokens(other))
                if n > best:
                    best, donor = n, other
        if donor is None:
            return
        start = request.num_prefilled
        for kv, pe in zip(self.cache.kv, self.cache.pe):
            kv[request.slot, start:best] = kv[donor.slot, start:best]
            pe[request.slot, start:best] = pe[donor.slot, start:best]
        self._skip_prefix(request, best)

    def _skip_prefix(self, request: Request, length: int) -> None:
        if length > request.num_prefilled:
            self.stats.cached_prompt_tokens += length - request.num_prefilled
            request.num_cached += length - request.num_prefilled
            request.num_prefilled = length

    def step(self) -> list[StepOutput]:
        """One forward pass: a prefill chunk of the oldest request still prefilling, or one decode token for every
        request past its prompt. When both are waiting they alternate, so a long prompt slows running streams
        down by at most one chunk per token instead of stopping them."""
        outputs = self._intake()
        prefilling = next((r for r in self._running if r.num_prefilled < len(r.prompt_ids)), None)
        decoding = [r for r in self._running if r.output_ids]
        if prefilling is not None and not (decoding and self._last_was_prefill):
            self._last_was_prefill = True
            try:
                logits = self._prefill_forward(prefilling)
            except Exception as first:
                # Once more, as a failed decode batch is retried request by request: a transient fault (an I/O
                # error reading an expert) costs one chunk. A chunk's pass only writes its own KV rows, and its
                # routing records are dropped with it (`_records`), so the retry is counted once.
                log.warning("prefill of request %d failed (%s); retrying the chunk once", prefilling.request_id,
                            first)
                try:
                    logits = self._prefill_forward(prefilling)
                except Exception as exc:  # a failing step fails its requests, never the engine
                    log.exception("prefill of request %d failed", prefilling.request_id)
                    return outputs + [self._fail(prefilling, exc)]
            return outputs + ([self._emit(prefilling, logits)] if logits is not None else [])
        self._last_was_prefill = False
        if not decoding:
            return outputs
        try:
            logits = self._decode_forward(decoding)
        except Exception:
            log.exception("decode step failed")
            return outputs + self._decode_alone(decoding)
        return outputs + [self._emit(r, logits[i]) for i, r in enumerate(decoding)]

    def _fail(self, request: Request, exc: Exception) -> StepOutput:
        self._finish(request, "error", f"{type(exc).__name__}: {exc}")
        return StepOutput(request.request_id, None, None, "error", request.error)

    def _decode_alone(self, requests: list[Request]) -> list[StepOutput]:
        """After a failed decode batch, each request decodes alone: a fault (an expert that cannot be read, a
        transient I/O error) fails only the requests that still meet it. A failed pass leaves nothing a retry
        does not overwrite (the KV rows of the same positions)."""
        outputs = []
        for request in requests:
            try:
                logits = self._decode_forward([request])
            except Exception as exc:
                log.exception("decode of request %d failed", request.request_id)
                outputs.append(self._fail(request, exc))
                continue
            outputs.append(self._emit(request, logits[0]))
        return outputs

    def _prefill_forward(self, request: Request) -> torch.Tensor | None:
        """Runs the next chunk of `request`'s prompt; the last chunk returns the logits of its last token."""
        self._copy_prefix_from_running(request)
        start = request.num_prefilled
        chunk = request.prompt_ids[start : start + self.prefill_chunk]
        n = len(chunk)
        device = self.model.device
        batch = Batch(
            torch.tensor(chunk, device=device),
            torch.arange(start, start + n, device=device),
            torch.full((n,), request.slot, device=device),
            is_prefill=True,
        )
        t0 = time.perf_counter()
        with self._records.held():
            logits = self.model(batch, self.cache, logits_rows=torch.tensor([n - 1], device=device))
        self.stats.prefill_seconds += time.perf_counter() - t0
        self.stats.prompt_tokens += n
        request.num_prefilled += n
        return logits[0] if request.num_prefilled == len(request.prompt_ids) else None

    def _decode_forward(self, requests: list[Request]) -> torch.Tensor:
        device = self.model.device
        batch = Batch(
            torch.tensor([r.output_ids[-1] for r in requests], device=device),
            torch.tensor([r.num_tokens - 1 for r in requests], device=device),
            torch.tensor([r.slot for r in requests], device=device),
            is_prefill=False,
        )
        t0 = time.perf_counter()
        with self._records.held():
            if self._decode_runner is not None:
                logits = self._decode_runner(batch)
            else:
                logits = self.model(batch, self.cache)
        self.stats.decode_seconds += time.perf_counter() - t0
        self.stats.decode_steps += 1
        return logits

    def _emit(self, request: Request, logits: torch.Tensor) -> StepOutput:
        """Samples `request`'s next token; a failure here (e.g. non-finite logits) fails this request alone."""
        try:
            token, logprobs = sample(logits, request.params, request.generator)
        except Exception as exc:
            log.exception("sampling for request %d failed", request.request_id)
            return self._fail(request, exc)
        request.output_ids.append(token)
        self.stats.generated_tokens += 1
        if request.first_token_time is None:
            request.first_token_time = time.perf_counter()
        reason = None
        if token in request.params.stop_ids:
            reason = "stop"
        elif len(request.output_ids) >= request.params.max_new_tokens or request.num_tokens >= self.max_context:
            reason = "length"
        if reason:
            self._finish(request, reason)
        cached = request.num_cached if len(request.output_ids) == 1 else None
        return StepOutput(request.request_id, token, logprobs, reason, cached_prompt_tokens=cached)

    # -- synchronous stream --------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yields generated ids one by one (a stop id, when sampled, is yielded last)."""
        request = self.add_request(prompt_ids, params)
        try:
            while not request.is_finished:
                for out in self.step():
                    if out.request_id != request.request_id:
                        continue
                    if out.error:
                        raise EngineError(out.error)
                    if out.token_id is not None:
                        yield out.token_id
        finally:
            if not request.is_finished:
                self.abort(request.request_id)
                self._intake()
