"""Aggregate decode throughput of `kimi-local serve` at 1, 4 and 8 concurrent streaming clients.

    python benchmarks/server_throughput.py [--model DIR] [--concurrency 1 4 8] [--tokens 32] [--expert-backend B]

Starts the real server (the built-in demo checkpoint unless --model) on a loopback port in this process and
drives it over HTTP with concurrent streaming chat requests (`ignore_eos`, so every request generates exactly
--tokens tokens; `logprobs`, so every token arrives as its own SSE chunk with a timestamp). All levels run
side by side in one run, on one loaded model. For each level it prints:

- decode tok/s: tokens that arrived while *all* requests were decoding (after the last first token, before
  the first request finished), per second of that window: the steady state of the batched decode;
- end-to-end tok/s: all completion tokens / wall time of the level, prefill and ramp included;
- time to first token (mean) and the engine's decode steps per generated token (1/c when c requests share
  every step: continuous batching at work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass

import httpx
import psutil
import torch


@dataclass
class Trace:
    start: float
    token_times: list[float]
    completion_tokens: int


async def one_request(http: httpx.AsyncClient, i: int, tokens: int) -> Trace:
    body = {
        "model": "bench", "stream": True, "max_tokens": tokens, "temperature": 0.6, "seed": i, "ignore_eos": True,
        "logprobs": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"Request {i}: write a short story about a lighthouse keeper."}],
    }
    start = time.perf_counter()
    times: list[float] = []
    usage = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                entries = (choice.get("logprobs") or {}).get("content") or []
                now = time.perf_counter()
                times += [now] * len(entries)
    return Trace(start, times, usage)


async def run_level(url: str, concurrency: int, tokens: int) -> list[Trace]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        return await asyncio.gather(*(one_request(http, i, tokens) for i in range(concurrency)))


def summarize(traces: list[Trace], wall: float, steps: int, generated: int) -> dict:
    first = max(t.token_times[0] for t in traces)
    last = min(t.token_times[-1] for t in traces)
    in_window = sum(1 for t in traces for x in t.token_times if first < x <= last)
    window = last - first
    return {
        "decode_tok_s": in_window / window if window > 0 else float("nan"),
        "end_to_end_tok_s": sum(t.completion_tokens for t in traces) / wall,
        "ttft_s": statistics.mean(t.token_times[0] - t.start for t in traces),
        "steps_per_token": steps / generated if generated else float("nan"),
        "tokens": sum(t.completion_tokens for t in traces),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: the built-in demo checkpoint)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--expert-backend", default=None,
                        help="auto | numba | torch (default: numba when available, else torch)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: physical cores)")
    parser.add_argument("--json-out", help="also write the results as JSON")
    args = parser.parse_args()

    from kimi_local.commands.common import ensure_demo_checkpoint
    from kimi_local.config import Config, EngineSection
    from kimi_local.engine.loader import load
    from kimi_local.server.app import create_app
    from kimi_local.server.runner import ServerThread, build_state

    torch.set_num_threads(args.threads or psutil.cpu_count(logical=False) or 1)
    backend = args.expert_backend
    if backend is None:
        try:
            import kimi_local.kernels.cpu_experts  # noqa: F401
            backend = "numba"
        except ImportError:
            backend = "torch"
    model_dir = args.model or ensure_demo_checkpoint()
    max_batch = max(args.concurrency)
    config = Config(engine=EngineSection(expert_backend=backend, max_batch=max_batch, max_context=1024))
    loaded = load(model_dir, config)
    state = build_state(loaded, "bench", max_queue=4 * max_batch)
    engine = loaded.engine
    results = {}
    print(f"model {model_dir} | experts: {backend} | device {loaded.model.device} | torch threads "
          f"{torch.get_num_threads()} | {args.tokens} tokens per request", file=sys.stderr)
    try:
        with ServerThread(create_app(state)) as server:
            asyncio.run(run_level(server.url, 1, 4))  # warm-up: first-call costs out of the measurement
            for c in args.concurrency:
                steps0, gen0 = engine.stats.decode_steps, engine.stats.generated_tokens
                t0 = time.perf_counter()
                traces = asyncio.run(run_level(server.url, c, args.tokens))
                wall = time.perf_counter() - t0
                results[c] = summarize(traces, wall, engine.stats.decode_steps - steps0,
                                       engine.stats.generated_tokens - gen0)
    finally:
        state.close()
    base = results.get(1, {}).get("decode_tok_s")
    header = ("clients", "decode tok/s", "x vs 1", "end-to-end tok/s", "TTFT s", "steps/token")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (7, 13, 7, 17, 8, 12))))
    for c, r in results.items():
        speedup = r["decode_tok_s"] / base if base else float("nan")
        print(f"{c:>7} {r['decode_tok_s']:>13.1f} {speedup:>7.2f} {r['end_to_end_tok_s']:>17.1f} "
              f"{r['ttft_s']:>8.2f} {r['steps_per_token']:>12.3f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"model": str(model_dir), "expert_backend": backend, "tokens": args.tokens,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
