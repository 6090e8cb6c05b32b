"""Side-by-side timing of the CPU's resident linear layers: block-fp8 `CpuFp8Linear` (what `linear_for` now builds
on the CPU) against float32 weights dequantized at load and `F.linear` (what it built before).

    python -m kimi_local.kernels.cpu_linear_bench [--threads 2] [--rounds 5] [--quick]

* decode: one token through every resident linear of a k2-slice model (real Kimi-K2 shapes: the dense layer 0's
  MLP and attention, then per MoE layer the attention projections and the shared expert), in model order; the
  whole set is far larger than the caches in either form, so every weight comes from RAM, as in a real decode
  step. Reported as tokens per second and the bytes each form reads.
* prefill: T tokens through single layers (o_proj [7168, 8192] and the dense gate [18432, 7168]), GFLOP/s.

Interleaved rounds, best round per figure; torch and Numba use the same thread count.
"""

from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np
import torch

from kimi_local.kernels.cpu_linear import CpuFp8Linear
from kimi_local.model.fp8 import dequantize, scale_grid_shape

HIDDEN, INTER, DENSE_INTER = 7168, 2048, 18432
ATTENTION = [(1536, HIDDEN), (12288, 1536), (576, HIDDEN), (HIDDEN, 8192)]  # q_a, q_b, kv_a_with_mqa, o_proj


def model_shapes(num_moe_layers: int) -> list[tuple[int, int]]:
    """[N, K] of every resident fp8 linear in model order (kv_b_proj is dequantized by the model: left out)."""
    dense = ATTENTION + [(DENSE_INTER, HIDDEN), (DENSE_INTER, HIDDEN), (HIDDEN, DENSE_INTER)]
    moe = ATTENTION + [(INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]
    return dense + moe * num_moe_layers


def random_fp8(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    codes = rng.integers(0, 256, shape, dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] ^= 1
    return codes, ((rng.random(scale_grid_shape(*shape), dtype=np.float32) + 0.5) / 448)


def best_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(threads: int, rounds: int, num_moe_layers: int, prefill_tokens: tuple[int, ...]) -> dict:
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    weights = [random_fp8(shape, rng) for shape in model_shapes(num_moe_layers)]
    fp8 = [CpuFp8Linear(codes, scales) for codes, scales in weights]
    fp32 = [torch.from_numpy(dequantize(codes, scales)) for codes, scales in weights]
    inputs = {k: torch.from_numpy(rng.standard_normal((1, k), dtype=np.float32)) for _, k in model_shapes(1)}

    def step_fp8():
        for layer in fp8:
            layer(inputs[layer.in_features])

    def step_fp32():
        for w in fp32:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    step_fp8(), step_fp32()  # compile, warm up
    fp8_s, fp32_s = [], []
    for _ in range(rounds):
        fp8_s.append(best_seconds(step_fp8, 1))
        fp32_s.append(best_seconds(step_fp32, 1))
    decode = {
        "fp8_tokens_per_s": 1 / min(fp8_s), "fp32_tokens_per_s": 1 / min(fp32_s),
        "fp8_speedup": min(fp32_s) / min(fp8_s),
        "fp8_bytes": sum(c.nbytes + s.nbytes for c, s in weights), "fp32_bytes": sum(w.numel() * 4 for w in fp32),
    }
    prefill = {}
    for name, index in (("o_proj", 3), ("dense_gate", 4)):
        layer, w = fp8[index], fp32[index]
        for tokens in prefill_tokens:
            xt = torch.from_numpy(rng.standard_normal((tokens, layer.in_features), dtype=np.float32))
            layer(xt)
            flops = 2 * tokens * w.numel()
            ours = best_seconds(lambda: layer(xt), rounds)
            theirs = best_seconds(lambda: torch.nn.functional.linear(xt, w), rounds)
            prefill[f"{name}_{tokens}"] = {"fp8_gflops": flops / ours / 1e9, "fp32_gflops": flops / theirs / 1e9,
                                           "fp8_vs_fp32": theirs / ours}
    return {"threads": threads, "moe_layers": num_moe_layers, "decode": decode, "prefill": prefill}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="one MoE layer, fewer prefill sizes")
    args = p.parse_args(argv)
    tokens = (16, 256) if args.quick else (16, 64, 256, 1024)
    print(json.dumps(run(args.threads, args.rounds, 1 if args.quick else 3, tokens), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
