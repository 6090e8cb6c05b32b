"""`kimi-local bench kernels`: the CPU expert kernels against the machine's memory bandwidth and against torch.

Measured side by side in one run, in interleaved rounds (each round: the bandwidth probe, ours, torch), so
that every figure sees the same machine load; each figure is the best round:

* read bandwidth: the memory probe's kernel (`bandwidth.sum_words`, a Numba streaming sum) over a buffer far
  larger than the caches, allocated as the RAM expert cache's memory is (huge pages where allowed, like the
  experts' copies below) and touched once (re-allocating it every round costs page faults and disturbs the
  other measurements), right after an untimed streaming pass over a small buffer of its own;
* decode: one token through 8 experts of Kimi-K2's shapes (gate/up [2048, 7168], down [7168, 2048]) with
  `moe_forward`, the experts in slots of one buffer as the RAM expert cache holds them, rotating over
  several distinct copies so that no weight byte comes from a cache, each pass after one untimed call (see
  `per_set`); reported as fp8 weight bytes per second (= weights per second). Torch's side: the same experts
  already dequantized to bf16 (copies in the same kind of memory), `F.linear` per matrix (what a user would
  run), in weights per second;
* prefill: 16, 64 and 256 tokens through one expert (`moe_forward`, the decode-once GEMM path) against torch
  fp32 matmuls on the same expert dequantized to float32, in GFLOP/s (2 * tokens * 3 * I * H per pass).

Weights are synthetic: random e4m3 codes (NaN codes excluded) and random scales; speed does not depend on the
values. Torch runs with the same thread count as ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numba
import numpy as np
import torch

from kimi_local.bandwidth import ones_buffer, sum_words
from kimi_local.hugepages import anonymous_buffer
from kimi_local.kernels.cpu_experts import usable_threads
from kimi_local.kernels.cpu_moe import Workspace, moe_forward
from kimi_local.model.experts import ExpertWeights
from kimi_local.model.fp8 import dequantize, scale_grid_shape


@dataclass(frozen=True)
class BenchSizes:
    hidden: int = 7168
    inter: int = 2048
    experts_per_token: int = 8
    prefill_tokens: tuple[int, ...] = (16, 64, 256)
    bandwidth_bytes: int = 2 << 30  # the probe's buffer
    rotation_bytes: int = 1 << 30  # decode rotates over at least this many bytes of distinct expert copies
    rounds: int = 5


WARM_UP_BYTES = 64 << 20  # streamed (untimed, a buffer of its own) just before each bandwidth probe


FULL = BenchSizes()
QUICK = BenchSizes(bandwidth_bytes=1 << 30, rotation_bytes=768 << 20, rounds=3)


def random_expert(sizes: BenchSizes, rng: np.random.Generator) -> ExpertWeights:
    arrays = []
    for shape in ((sizes.inter, sizes.hidden), (sizes.inter, sizes.hidden), (sizes.hidden, sizes.inter)):
        codes = rng.integers(0, 256, shape, dtype=np.uint8)
        codes[(codes & 0x7F) == 0x7F] ^= 1  # 0x7f/0xff are NaN: make them 0x7e/0xfe
        arrays += [codes, (rng.random(scale_grid_shape(*shape), dtype=np.float32) + 0.5) / 448]
    return ExpertWeights(*arrays)


def in_slots(experts: list[ExpertWeights]) -> list[ExpertWeights]:
    """Copies of `experts` laid out the way the engine holds them: one buffer (allocated as the RAM expert
    cache's arena is, `cache/slots.py`) cut into page-aligned slots, an expert's six arrays back to back."""
    arrays = [(w.gate_q, w.gate_s, w.up_q, w.up_s, w.down_q, w.down_s) for w in experts]
    slot_bytes = -(-sum(-(-a.nbytes // 64) * 64 for a in arrays[0]) // 4096) * 4096
    _, arena = anonymous_buffer(slot_bytes * len(experts))
    placed = []
    for i, group in enumerate(arrays):
        offset, views = i * slot_bytes, []
        for a in group:
            view = arena[offset : offset + a.nbytes].view(a.dtype).reshape(a.shape)
            view[...] = a
            views.append(view)
            offset += -(-a.nbytes // 64) * 64
        placed.append(ExpertWeights(*views))
    return placed


def dequantized(w: ExpertWeights, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(dequantize(q, s)).to(dtype)
                 for q, s in ((w.gate_q, w.gate_s), (w.up_q, w.up_s), (w.down_q, w.down_s)))


def same_memory_kind(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` in memory allocated as our experts' is (huge pages where allowed), so that both sides of the
    decode comparison read the same kind of memory."""
    _, raw = anonymous_buffer(t.numel() * t.element_size())
    copy = torch.from_numpy(raw).view(t.dtype).view(t.shape)
    copy.copy_(t)
    return copy


def torch_experts(x: torch.Tensor, experts: list[tuple[torch.Tensor, ...]], weights: list[float]) -> torch.Tensor:
    """What a user would run on dequantized weights: per expert three F.linear calls, weighted sum."""
    out = torch.zeros_like(x)
    for (gate, up, down), w in zip(experts, weights):
        h = torch.nn.functional.silu(torch.nn.functional.linear(x, gate)) * torch.nn.functional.linear(x, up)
        out += w * torch.nn.functional.linear(h, down)
    return out


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_benchmark(sizes: BenchSizes = FULL, threads: int = 2, seed: int = 0) -> dict[str, Any]:
    """All figures as one dict (the `--json` object)."""
    threads = usable_threads(threads)
    previous_torch, previous_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    try:
        rng = np.random.default_rng(seed)
        experts = [random_expert(sizes, rng) for _ in range(sizes.experts_per_token)]
        decode = _decode_figures(sizes, experts, rng)
        prefill = _prefill_figures(sizes, experts[0], rng)
    finally:
        torch.set_num_threads(previous_torch)
        numba.set_num_threads(previous_numba)
    return {
        "threads": threads,
        "shapes": {"gate_up": [sizes.inter, sizes.hidden], "down": [sizes.hidden, sizes.inter],
                   "experts_per_token": sizes.experts_per_token},
        **decode,
        **prefill,
    }


def _decode_figures(sizes: BenchSizes, base: list[ExpertWeights], rng: np.random.Generator) -> dict[str, float]:
    k = len(base)
    set_bytes = sum(w.nbytes for w in base)
    num_weights = sum(w.gate_q.size + w.up_q.size + w.down_q.size for w in base)
    num_sets = max(2, -(-sizes.rotation_bytes // set_bytes))
    ours_sets = [in_slots(base) for _ in range(num_sets)]
    torch_base = [dequantized(w, torch.bfloat16) for w in base]
    torch_sets = [[tuple(same_memory_kind(t) for t in e) for e in torch_base] for _ in range(num_sets)]
    routing_weights = (rng.random((1, k), dtype=np.float32) + 0.5) / k
    x = rng.standard_normal((1, sizes.hidden), dtype=np.float32)
    x_bf16 = torch.from_numpy(x).to(torch.bfloat16)
    ids = np.arange(k)

    workspace = Workspace()  # as NumbaExperts keeps one

    def ours(experts):
        return moe_forward(x, ids[None, :], routing_weights, ids, experts, workspace)

    def theirs(experts):
        return torch_experts(x_bf16, experts, routing_weights[0].tolist())

    words = ones_buffer(sizes.bandwidth_bytes)
    warm_words = ones_buffer(WARM_UP_BYTES)  # a separate buffer: warms the machine, not the caches
    ours(ours_sets[0]), theirs(torch_sets[0]), sum_words(words[:1024])  # compile / warm up

    def per_set(fn, sets):
        """Seconds per set over one pass. An untimed call on the last set goes first: the first call after a
        different workload runs 20-40% slower here (measured; the cores and memory come up to speed in a few
        calls), and a decode step runs its layers back to back. That set is read again only after all the
        others, so nothing it left in a cache is reused."""
        fn(sets[-1])
        return sum(seconds(lambda: fn(s)) for s in sets) / len(sets)

    bandwidth, ours_s, theirs_s = [], [], []
    for _ in range(sizes.rounds):  # a round touches every copy once: no weight byte comes from a cache
        sum_words(warm_words)
        bandwidth.append(words.nbytes / seconds(lambda: sum_words(words)))
        ours_s.append(per_set(ours, ours_sets))
        theirs_s.append(per_set(theirs, torch_sets))
    read_bw, decode_bps, torch_wps = max(bandwidth), set_bytes / min(ours_s), num_weights / min(theirs_s)
    return {
        "read_bandwidth_gbps": read_bw / 1e9,
        "decode_gbps": decode_bps / 1e9,
        "decode_vs_bandwidth": decode_bps / read_bw,
        "torch_bf16_decode_gweights_per_s": torch_wps / 1e9,
        "decode_vs_torch_bf16": decode_bps / torch_wps,
    }


def _prefill_figures(sizes: BenchSizes, expert: ExpertWeights,
                     rng: np.random.Generator) -> dict[str, dict[str, float]]:
    fp32 = [dequantized(expert, torch.float32)]
    workspace = Workspace()
    flops_per_token = 2 * 3 * sizes.inter * sizes.hidden
    ours, theirs = {}, {}
    for tokens in sizes.prefill_tokens:
        x = rng.standard_normal((tokens, sizes.hidden), dtype=np.float32)
        x_torch = torch.from_numpy(x)
        ids, weights = np.zeros((tokens, 1), np.int64), np.ones((tokens, 1), np.float32)
        run_ours = lambda: moe_forward(x, ids, weights, [0], [expert], workspace)  # noqa: E731
        run_theirs = lambda: torch_experts(x_torch, fp32, [1.0])  # noqa: E731
        run_ours(), run_theirs()
        ours_s, theirs_s = [], []
        for _ in range(sizes.rounds):
            ours_s.append(seconds(run_ours))
            theirs_s.append(seconds(run_theirs))
        ours[str(tokens)] = tokens * flops_per_token / min(ours_s) / 1e9
        theirs[str(tokens)] = tokens * flops_per_token / min(theirs_s) / 1e9
    return {
        "prefill_gflops": ours,
        "torch_fp32_prefill_gflops": theirs,
        "prefill_vs_torch_fp32": {t: ours[t] / theirs[t] for t in ours},
    }


def format_report(r: dict[str, Any]) -> str:
    s = r["shapes"]
    lines = [
        f"CPU expert kernels, {r['threads']} threads, gate/up {s['gate_up']}, down {s['down']}",
        f"  memory read bandwidth            {r['read_bandwidth_gbps']:7.1f} GB/s",
        f"  decode: 1 token x {s['experts_per_token']} experts     {r['decode_gbps']:7.1f} GB/s of fp8 weights"
        f" = {r['decode_vs_bandwidth']:.2f} x read bandwidth",
        f"  torch bf16, same experts         {r['torch_bf16_decode_gweights_per_s']:7.1f} G weights/s"
        f"  -> ours {r['decode_vs_torch_bf16']:.2f} x",
    ]
    for tokens, gflops in r["prefill_gflops"].items():
        lines.append(f"  prefill: {int(tokens):3d} tokens, 1 expert   {gflops:7.1f} GFLOP/s"
                     f"   torch fp32 {r['torch_fp32_prefill_gflops'][tokens]:6.1f}"
                     f"  -> ours {r['prefill_vs_torch_fp32'][tokens]:.2f} x")
    return "\n".join(lines)
