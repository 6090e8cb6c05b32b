"""A bounded soak: concurrent clients mixing every kind of request against one server, for a fixed time.

Each client loops until the deadline, picking a request kind at random (seeded):

- `chat`, `chat_stream`, `messages`, `messages_stream`, `completion`: ordinary requests with short random
  prompts and token limits (sometimes `n` = 2, sometimes a long reply that runs to its limit); a reply counts
  as served when it is complete and well formed (a streamed one must end with `[DONE]` / `message_stop`, every
  `data:` frame JSON);
- `cancelled`: a streamed chat request the client walks away from after its first chunk or a random moment;
  the server must abort it and free its KV slot;
- `oversized`: a prompt longer than the context, which must be refused with a 400 naming the context length.

Outcomes: served, refused (an expected 4xx), busy (429: the queue is full, the documented back-pressure),
cancelled, and errors by kind (any 5xx, an unexpected status, a transport error, a malformed reply). Latency
is measured for served requests (send to last byte). The server's RSS is sampled throughout (start = after a
warm-up, so one-off allocations are not counted as growth).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psutil

KINDS = {"chat": 4, "chat_stream": 4, "messages": 2, "messages_stream": 2, "completion": 2, "cancelled": 2,
         "oversized": 1}
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly boxes".split()


@dataclass
class SoakReport:
    seconds: float
    clients: int
    requests: Counter = field(default_factory=Counter)  # by kind
    served: int = 0
    refused: int = 0
    busy: int = 0
    cancelled: int = 0
    errors: Counter = field(default_factory=Counter)  # "kind: what" -> count
    latencies: list[float] = field(default_factory=list)
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0

    @property
    def num_errors(self) -> int:
        return sum(self.errors.values())

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q) - 1]

    def summary(self) -> str:
        mib = 1 << 20
        errors = ", ".join(f"{k}: {n}" for k, n in self.errors.most_common()) or "none"
        return (f"{sum(self.requests.values())} requests in {self.seconds:.0f} s from {self.clients} clients "
                f"({', '.join(f'{k} {n}' for k, n in sorted(self.requests.items()))})\n"
                f"served {self.served}, refused {self.refused} (as expected), busy (429) {self.busy}, "
                f"cancelled {self.cancelled}; errors: {errors}\n"
                f"latency of served requests: p50 {self.percentile(50) * 1000:.0f} ms, "
                f"p99 {self.percentile(99) * 1000:.0f} ms\n"
                f"server RSS: start {self.rss_start / mib:.0f} MiB, end {self.rss_end / mib:.0f} MiB, "
                f"peak {self.rss_peak / mib:.0f} MiB (growth {(self.rss_end - self.rss_start) / mib:+.0f} MiB)")


class RssSampler:
    """Samples a process's RSS on a thread until stopped."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        value = self.process.memory_info().rss
        self.peak = max(self.peak, value)
        return value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.rss()

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _prompt(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


async def _sse_frames(response: httpx.Response):
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line[6:]


class _Client:
    def __init__(self, http: httpx.AsyncClient, rng: random.Random, report: SoakReport, max_context: int):
        self.http, self.rng, self.report, self.max_context = http, rng, report, max_context

    def _limit(self) -> int:
        return self.rng.choice([1, 4, 8, 16, 24]) if self.rng.random() < 0.9 else 96  # sometimes a long reply

    def _words(self) -> int:
        return self.rng.randint(1, max(2, self.max_context // 8))  # prompts that fit the context

    def _chat_body(self, stream: bool) -> dict:
        return {"messages": [{"role": "user", "content": _prompt(self.rng, self._words())}],
                "max_tokens": self._limit(), "temperature": self.rng.choice([0.0, 0.6, 1.0]), "stream": stream,
                "n": 2 if self.rng.random() < 0.1 else 1, "seed": self.rng.randrange(1 << 30)}

    def _messages_body(self, stream: bool) -> dict:
        return {"model": "m", "messages": [{"role": "user", "content": _prompt(self.rng, self._words())}],
                "max_tokens": self._limit(), "stream": stream}

    async def one(self, kind: str) -> tuple[str, str | None]:
        """(outcome, error description): outcome is served / refused / busy / cancelled / error."""
        if kind == "chat":
            r = await self.http.post("/v1/chat/completions", json=self._chat_body(False))
            return self._json_reply(r, lambda b: b["choices"] and all(c["finish_reason"] for c in b["choices"]))
        if kind == "messages":
            r = await self.http.post("/v1/messages", json=self._messages_body(False))
            return self._json_reply(r, lambda b: b["type"] == "message" and b["stop_reason"])
        if kind == "completion":
            body = {"prompt": _prompt(self.rng, self._words()), "max_tokens": self._limit()}
            r = await self.http.post("/v1/completions", json=body)
            return self._json_reply(r, lambda b: b["choices"][0]["finish_reason"] in ("stop", "length"))
        if kind == "oversized":
            body = {"messages": [{"role": "user", "content": _prompt(self.rng, self.max_context * 2)}], "max_tokens": 4}
            r = await self.http.post("/v1/chat/completions", json=body)
            if r.status_code == 400 and r.json()["error"].get("code") == "context_length_exceeded":
                return "refused", None
            if r.status_code == 200:
                return "error", "an oversized prompt was accepted"
            return self._status(r.status_code, r.text)  # 429: the queue is checked first
        if kind == "chat_stream":
            return await self._stream("/v1/chat/completions", self._chat_body(True), "[DONE]")
        if kind == "messages_stream":
            return await self._stream("/v1/messages", self._messages_body(True), "message_stop")
        if kind == "cancelled":
            body = self._chat_body(True)
            body["max_tokens"] = 64
            async with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    return self._status(r.status_code, (await r.aread()).decode(errors="replace"))
                if self.rng.random() < 0.5:
                    async for _ in _sse_frames(r):
                        break  # walk away after the first chunk
                else:
                    await asyncio.sleep(self.rng.random() * 0.3)
            return "cancelled", None
        raise ValueError(kind)

    def _status(self, status: int, body: str) -> tuple[str, str | None]:
        """busy for a 429; else an error keyed by status and the error's code or type (bounded key set)."""
        if status == 429:
            return "busy", None
        try:
            error = json.loads(body)["error"]
            what = error.get("code") or error.get("type")
        except (ValueError, KeyError, TypeError, AttributeError):
            what = "no error body"
        return "error", f"status {status} {what}"

    def _json_reply(self, r: httpx.Response, complete) -> tuple[str, str | None]:
        if r.status_code != 200:
            return self._status(r.status_code, r.text)
        try:
            ok = complete(r.json())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return "error", f"malformed reply ({type(exc).__name__})"
        return ("served", None) if ok else ("error", "incomplete reply")

    async def _stream(self, path: str, body: dict, last: str) -> tuple[str, str | None]:
        async with self.http.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                return self._status(r.status_code, (await r.aread()).decode(errors="replace"))
            final = None
            async for data in _sse_frames(r):
                if data == "[DONE]":
                    final = data
                    continue
                try:
                    frame = json.loads(data)
                except ValueError:
                    return "error", "a stream frame is not JSON"
                if "error" in frame and frame.get("type") in (None, "error"):
                    return "error", f"error frame: {str(frame['error'])[:80]}"
                final = frame.get("type", final)
        return ("served", None) if final == last else ("error", f"stream ended without {last}")

    async def loop(self, deadline: float) -> None:
        kinds, weights = zip(*KINDS.items())
        while time.monotonic() < deadline:
            kind = self.rng.choices(kinds, weights)[0]
            self.report.requests[kind] += 1
            start = time.perf_counter()
            try:
                outcome, error = await self.one(kind)
            except httpx.HTTPError as exc:
                outcome, error = "error", f"transport {type(exc).__name__}"
            if outcome == "served":
                self.report.served += 1
                self.report.latencies.append(time.perf_counter() - start)
            elif outcome == "error":
                self.report.errors[f"{kind}: {error}"] += 1
            else:
                setattr(self.report, outcome, getattr(self.report, outcome) + 1)


async def _soak(base_url: str, seconds: float, clients: int, seed: int, report: SoakReport, max_context: int) -> None:
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_Client(http, random.Random(seed * 1000 + i), report, max_context).loop(deadline)
                               for i in range(clients)))


def warm_up(base_url: str) -> None:
    """One request of each kind, so the RSS baseline includes what the first requests allocate once."""
    with httpx.Client(base_url=base_url, timeout=120) as http:
        for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                                                     "stream": True, "n": 2}),
                           ("/v1/messages", {"model": "m", "max_tokens": 8, "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/completions", {"prompt": "hi", "max_tokens": 8})):
            http.post(path, json=body).raise_for_status()


def wait_idle(base_url: str, timeout: float = 60.0) -> dict:
    """The server's /health once nothing runs or waits (raises TimeoutError if requests stay behind)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while True:
            health = http.get("/health").json()
            if health["running"] == 0 and health["waiting"] == 0:
                return health
            if time.monotonic() > deadline:
                raise TimeoutError(f"requests still in the engine after the soak: {health}")
            time.sleep(0.05)


def run_soak(base_url: str, seconds: float, clients: int = 16, seed: int = 0, server_pid: int | None = None,
             max_context: int = 256) -> SoakReport:
    """`server_pid`: whose RSS to sample (default this process, for an in-process server)."""
    report = SoakReport(seconds, clients)
    warm_up(base_url)
    with RssSampler(server_pid or psutil.Process().pid) as rss:
        report.rss_start = rss.rss()
        start = time.monotonic()
        asyncio.run(_soak(base_url, seconds, clients, seed, report, max_context))
        report.seconds = time.monotonic() - start
        wait_idle(base_url)
        report.rss_end = rss.rss()
    report.rss_peak = rss.peak
    return report
