"""The one prepared check for a CUDA machine: GPU tests, fp8 kernel bandwidth, decode tokens/s.

    python benchmarks/gpu_check.py [--model DIR | --make-k2-slice DIR] [--json-out FILE] [--skip-tests] [--quick]
                                   [--decode-only] [--new-tokens N]

1. Runs the GPU-marked tests (`pytest -m gpu tests`): the kernels at real Kimi-K2 shapes against their
   references, and whatever model-on-GPU tests exist.
2. Measures, side by side in this one run:
   * the card's practical memory bandwidth: a device-to-device copy (read + write bytes / time);
   * the block-fp8 GEMV (`fp8_linear`, M = 1 and 4) at Kimi shapes: achieved GB/s of bytes it must read, as a
     fraction of the copy bandwidth, against torch's bf16 matmul on the dequantized weight (2 bytes/weight);
     a small sweep of GEMV tile choices prints the best one next to the default;
   * the prefill GEMM (M = 512) in TFLOP/s against torch bf16;
   * the fused GPU-tier MoE for one decode token (8 experts) in GB/s against a torch bf16 loop;
   * the absorbed MLA decode attention in GB/s of latent cache read.
   Weights rotate through enough copies to exceed 4x the L2 cache, so the numbers are DRAM numbers. Kernel
   times are GPU times: 16 calls recorded in one CUDA graph and replayed (as the decode runner replays a layer),
   so the host's launch overhead is left out; the eager time per call, overhead included, is printed beside.
3. Decode tokens/s on a checkpoint (the k2-slice preset has real Kimi layer shapes), loaded once in this process
   as `kimi-local generate` loads it with the default configuration: greedy decoding with the per-layer CUDA
   graphs and without, each after a warm-up generation of the same tokens (so the experts it needs are in RAM:
   a best case for the expert store), timed from the third token on.

Without CUDA it prints a message and exits 0. The exit status is 1 when the GPU tests fail.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEVICE = torch.device("cuda")

# (name, N, K): o_proj, the dense layer's gate, one routed expert's gate, the partial-block kv_a, q_b
GEMV_SHAPES = [
    ("o_proj", 7168, 8192),
    ("dense_gate", 18432, 7168),
    ("expert_gate", 2048, 7168),
    ("expert_down", 7168, 2048),
    ("kv_a_proj", 576, 7168),
    ("q_b_proj", 12288, 1536),
]


def time_cuda(fn, reps: int, warmup: int = 3) -> float:
    """Median seconds per call; fn(i) gets the repetition index (to rotate inputs)."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (start, end) in enumerate(events):
        start.record()
        fn(i)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


def time_graph(fn, reps: int, calls: int) -> float | None:
    """Median seconds per call of the GPU work alone: `calls` calls (rotating inputs) recorded in one CUDA graph
    and replayed, as the decode runner replays a layer, so host launch overhead and the value checks the
    kernels skip while capturing drop out. None when the calls cannot be captured."""
    for i in range(3):
        fn(i)  # compiles, allocates, checks the inputs
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            for i in range(calls):
                fn(i)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(i)
    except RuntimeError as exc:
        print(f"  (not capturable, eager time only: {str(exc).splitlines()[0][:120]})")
        torch.cuda.synchronize()
        return None
    return time_cuda(lambda _: graph.replay(), reps, warmup=2) / calls


def time_both(fn, reps: int, copies: int = 1) -> tuple[float, float]:
    """(GPU seconds per call from a graph replay, or the eager time if not capturable; eager seconds per call,
    host launch overhead included). The graph records max(16, copies) calls, so it cycles through every input
    copy that `fn(i)` rotates over."""
    eager = time_cuda(fn, reps)
    graphed = time_graph(fn, reps, max(16, copies))
    return (graphed if graphed is not None else eager), eager


def num_copies(nbytes: int) -> int:
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
    return max(2, math.ceil(4 * l2 / nbytes))


def copy_bandwidth(reps: int) -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * (1 << 30) / time_cuda(lambda i: dst.copy_(src), reps) / 1e9


def random_weight(num_out: int, num_in: int):
    from kimi_local.model.fp8 import scale_grid_shape

    codes = torch.randint(0, 256, (num_out, num_in), dtype=torch.uint8, device=DEVICE)
    codes[(codes & 0x7F) == 0x7F] = 0
    scales = torch.rand(scale_grid_shape(num_out, num_in), device=DEVICE) * 0.01 + 1e-3
    return codes, scales


def bench_linear(name: str, num_out: int, num_in: int, copy_gbps: float, reps: int, sweep: bool) -> dict:
    from kimi_local.kernels.triton_fp8_linear import fp8_linear
    from kimi_local.model.fp8 import dequantize_torch

    copies = [random_weight(num_out, num_in) for _ in range(num_copies(num_out * num_in))]
    dense = [dequantize_torch(c, s, torch.bfloat16) for c, s in copies[: num_copies(2 * num_out * num_in)]]
    scale_bytes = copies[0][1].numel() * 4
    row = {"name": name, "N": num_out, "K": num_in}
    for rows in (1, 4):
        x = torch.randn((rows, num_in), device=DEVICE, dtype=torch.bfloat16)
        io_bytes = 2 * rows * (num_in + num_out)
        t_fp8, t_fp8_eager = time_both(lambda i: fp8_linear(x, *copies[i % len(copies)]), reps, len(copies))
        t_bf16, _ = time_both(lambda i: torch.nn.functional.linear(x, dense[i % len(dense)]), reps, len(dense))
        fp8_gbps = (num_out * num_in + scale_bytes + io_bytes) / t_fp8 / 1e9
        row[f"m{rows}"] = {
            "fp8_us": t_fp8 * 1e6, "fp8_eager_us": t_fp8_eager * 1e6, "fp8_gbps": fp8_gbps,
            "fp8_of_copy": fp8_gbps / copy_gbps,
            "bf16_us": t_bf16 * 1e6, "bf16_gbps": (2 * num_out * num_in + io_bytes) / t_bf16 / 1e9,
            "speedup_vs_bf16": t_bf16 / t_fp8,
        }
    if sweep:
        x = torch.randn((1, num_in), device=DEVICE, dtype=torch.bfloat16)
        best = None
        for block_n in (16, 32, 64, 128):
            for split_k in (None, 1, 2, 4, 8, 16):
                if split_k is not None and split_k > math.ceil(num_in / 128):
                    continue
                t, _ = time_both(lambda i: fp8_linear(x, *copies[i % len(copies)], variant="gemv",
                                                      block_n=block_n, split_k=split_k), reps, len(copies))
                if best is None or t < best[0]:
                    best = (t, block_n, split_k)
        row["gemv_best"] = {"us": best[0] * 1e6, "block_n": best[1], "split_k": best[2] or "auto",
                            "gbps": (num_out * num_in + scale_bytes) / best[0] / 1e9}
    rows = 512
    x = torch.randn((rows, num_in), device=DEVICE, dtype=torch.bfloat16)
    flops = 2 * rows * num_out * num_in
    t_fp8, _ = time_both(lambda i: fp8_linear(x, *copies[i % len(copies)]), max(5, reps // 4), len(copies))
    t_bf16, _ = time_both(lambda i: torch.nn.functional.linear(x, dense[i % len(dense)]), max(5, reps // 4),
                          len(dense))
    row["m512"] = {"fp8_tflops": flops / t_fp8 / 1e12, "bf16_tflops": flops / t_bf16 / 1e12,
                   "speedup_vs_bf16": t_bf16 / t_fp8}
    return row


def bench_moe(copy_gbps: float, reps: int, hidden=7168, inter=2048, num_slots=64, top_k=8) -> dict:
    """One decode token routed to 8 experts, all in a 64-slot GPU tier (Kimi shapes)."""
    from kimi_local.kernels.triton_moe import StackedExperts, fused_moe
    from kimi_local.model.fp8 import dequantize_torch

    tier = StackedExperts.empty(num_slots, hidden, inter, device=DEVICE)
    for codes in (tier.gate_q, tier.up_q, tier.down_q):
        codes.random_(0, 0x7F)
    for scales in (tier.gate_s, tier.up_s, tier.down_s):
        scales.uniform_(1e-3, 1e-2)
    slot_of_expert = torch.arange(num_slots, device=DEVICE, dtype=torch.int32)
    x = torch.randn((1, hidden), device=DEVICE, dtype=torch.bfloat16)
    weights = torch.rand((1, top_k), device=DEVICE)
    choices = [torch.randperm(num_slots, device=DEVICE)[:top_k][None] for _ in range(16)]
    expert_bytes = 3 * hidden * inter
    t_fp8, t_fp8_eager = time_both(lambda i: fused_moe(x, choices[i % 16], weights, tier, slot_of_expert), reps)
    dense = [[dequantize_torch(q[s], sc[s], torch.bfloat16) for q, sc in
              ((tier.gate_q, tier.gate_s), (tier.up_q, tier.up_s), (tier.down_q, tier.down_s))] for s in range(16)]

    def torch_moe(i):
        out = torch.zeros_like(x)
        for k in range(top_k):
            gate, up, down = dense[(i * top_k + k) % 16]
            h = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
            out += weights[0, k] * (h @ down.T)
        return out

    t_bf16, _ = time_both(torch_moe, reps)
    fp8_gbps = top_k * expert_bytes / t_fp8 / 1e9
    return {"fp8_us": t_fp8 * 1e6, "fp8_eager_us": t_fp8_eager * 1e6, "fp8_gbps": fp8_gbps, "fp8_of_copy": fp8_gbps / copy_gbps,
            "bf16_loop_us": t_bf16 * 1e6, "speedup_vs_bf16_loop": t_bf16 / t_fp8}


def bench_mla(copy_gbps: float, reps: int) -> list[dict]:
    """Absorbed decode attention, 64 heads, bf16 latent cache [B, T, 576], against the torch formula. Caches
    rotate through copies beyond 4x the L2 cache, as the weights do."""
    from kimi_local.kernels.triton_mla import mla_decode, mla_decode_reference

    rows = []
    for batch, capacity in ((1, 4096), (1, 32768), (8, 4096)):
        caches = [torch.randn((batch, capacity, 576), device=DEVICE, dtype=torch.bfloat16)
                  for _ in range(num_copies(batch * capacity * 576 * 2))]
        q = torch.randn((batch, 64, 512), device=DEVICE, dtype=torch.bfloat16) * 0.05
        q_pe = torch.randn((batch, 64, 64), device=DEVICE, dtype=torch.bfloat16) * 0.05

        def args(i):
            cache = caches[i % len(caches)]
            return q, q_pe, cache[..., :512], cache[..., 512:], 0.13

        t_triton, t_eager = time_both(lambda i: mla_decode(*args(i)), reps, len(caches))
        t_torch, _ = time_both(lambda i: mla_decode_reference(*args(i)), max(5, reps // 4), len(caches))
        gbps = caches[0].numel() * 2 / t_triton / 1e9
        rows.append({"batch": batch, "tokens": capacity, "us": t_triton * 1e6, "eager_us": t_eager * 1e6, "gbps": gbps,
                     "of_copy": gbps / copy_gbps, "torch_f32_us": t_torch * 1e6})
    return rows


def run_gpu_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    return {"returncode": result.returncode, "summary": tail[-1] if tail else ""}


def decode_tokens_per_s(model_dir: str, new_tokens: int) -> dict:
    """Decode tokens/s in one process, the model loaded once as `kimi-local generate` loads it: greedy decoding
    of `new_tokens` tokens with the per-layer CUDA graphs and without, each after a warm-up generation (compiles,
    graph capture, the expert store's first reads), timed from the third token to the last so that prefill and
    the first decode step drop out. Engines are rebuilt per mode; the model and its expert store are shared."""
    import time

    from kimi_local.config import Config
    from kimi_local.engine.engine import Engine
    from kimi_local.engine.loader import load
    from kimi_local.engine.sampling import SamplingParams

    config = Config()
    loaded = load(model_dir, config)
    prompt = list(range(1, 9))
    params = SamplingParams(max_new_tokens=max(new_tokens, 4), temperature=0.0)
    report: dict = {"model": model_dir, "new_tokens": params.max_new_tokens}
    try:
        for key, graphs in (("decode_tokens_per_s", True), ("decode_tokens_per_s_no_graphs", False)):
            loaded.model.cuda_graphs = graphs
            engine = Engine(loaded.model, config.engine.max_context, config.engine.max_batch,
                            config.engine.prefill_chunk)
            list(engine.generate(prompt, params))  # warm-up
            stamps = []
            for _ in engine.generate(prompt, params):
                torch.cuda.synchronize()
                stamps.append(time.perf_counter())
            report[key] = (len(stamps) - 3) / (stamps[-1] - stamps[2])
    finally:
        loaded.close()
    report["graphs_speedup"] = report["decode_tokens_per_s"] / report["decode_tokens_per_s_no_graphs"]
    return report


def make_k2_slice(out_dir: str) -> str:
    if not Path(out_dir, "config.json").exists():
        cmd = [sys.executable, "-m", "kimi_local", "make-checkpoint", "--preset", "k2-slice", "--out", out_dir]
        subprocess.run(cmd, cwd=REPO, check=True)
    return out_dir


def print_report(report: dict) -> None:
    if "copy_gbps" in report:
        print_kernels(report)
    if "decode" in report:
        d = report["decode"]
        print(f"decode on {d['model']}: {d['decode_tokens_per_s']:.2f} tokens/s with CUDA graphs, "
              f"{d['decode_tokens_per_s_no_graphs']:.2f} without ({d['graphs_speedup']:.2f}x)")


def print_kernels(report: dict) -> None:
    print(f"\n{report['device']}: device-to-device copy {report['copy_gbps']:.0f} GB/s")
    print(f"{'shape':<12} {'N x K':>12} | {'fp8 M=1 us':>10} {'eager':>6} {'GB/s':>6} {'of copy':>7} {'bf16 us':>8}"
          f" {'x':>5} |"
          f" {'fp8 M=4 us':>10} {'x':>5} | {'M=512 fp8/bf16 TF':>17} | best gemv")
    for row in report["linear"]:
        m1, m4, big = row["m1"], row["m4"], row["m512"]
        best = row.get("gemv_best")
        best_text = f"{best['us']:.1f} us bn={best['block_n']} sk={best['split_k']}" if best else "-"
        print(f"{row['name']:<12} {row['N']:>5} x {row['K']:<5} | {m1['fp8_us']:>10.1f} {m1['fp8_eager_us']:>6.0f}"
              f" {m1['fp8_gbps']:>6.0f}"
              f" {m1['fp8_of_copy']:>7.0%} {m1['bf16_us']:>8.1f} {m1['speedup_vs_bf16']:>5.2f} |"
              f" {m4['fp8_us']:>10.1f} {m4['speedup_vs_bf16']:>5.2f} |"
              f" {big['fp8_tflops']:>7.0f} / {big['bf16_tflops']:<7.0f} | {best_text}")
    moe = report["moe"]
    print(f"fused MoE, 1 token x 8 experts: {moe['fp8_us']:.1f} us (eager {moe['fp8_eager_us']:.0f}), "
          f"{moe['fp8_gbps']:.0f} GB/s "
          f"({moe['fp8_of_copy']:.0%} of copy), {moe['speedup_vs_bf16_loop']:.2f}x a torch bf16 loop")
    for row in report["mla"]:
        print(f"MLA decode B={row['batch']} T={row['tokens']}: {row['us']:.1f} us (eager {row['eager_us']:.0f}), "
              f"{row['gbps']:.0f} GB/s of cache "
              f"({row['of_copy']:.0%} of copy); torch float32 formula {row['torch_f32_us']:.1f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory for the decode tokens/s measurement")
    parser.add_argument("--make-k2-slice", metavar="DIR", help="write the k2-slice preset here (if absent) and use it")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode tokens to time (default 32)")
    parser.add_argument("--json-out", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no GEMV tile sweep")
    parser.add_argument("--decode-only", action="store_true", help="only the decode tokens/s measurement")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (run it on a machine with an NVIDIA GPU).")
        return 0
    sys.path.insert(0, str(REPO))
    props = torch.cuda.get_device_properties(0)
    report = {"device": f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"}
    if not (args.skip_tests or args.decode_only):
        report["tests"] = run_gpu_tests()
    if not args.decode_only:
        reps = 10 if args.quick else 40
        report["copy_gbps"] = copy_bandwidth(reps)
        report["linear"] = []
        for name, num_out, num_in in GEMV_SHAPES:
            report["linear"].append(bench_linear(name, num_out, num_in, report["copy_gbps"], reps, not args.quick))
            torch.cuda.empty_cache()
        report["moe"] = bench_moe(report["copy_gbps"], reps)
        report["mla"] = bench_mla(report["copy_gbps"], reps)
    model_dir = args.model
    if model_dir or args.make_k2_slice:
        try:
            model_dir = model_dir or make_k2_slice(args.make_k2_slice)
            report["decode"] = decode_tokens_per_s(model_dir, args.new_tokens)
        except Exception as exc:  # keep the kernel figures (a bad --model, a failed load)
            report["decode_error"] = str(exc)
            print(f"decode tokens/s: failed: {exc}")
    else:
        print("decode tokens/s: skipped (pass --model DIR or --make-k2-slice DIR)")
    print_report(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 1 if report.get("tests", {}).get("returncode", 0) not in (0, 5) else 0  # 5: no GPU tests collected


if __name__ == "__main__":
    sys.exit(main())
