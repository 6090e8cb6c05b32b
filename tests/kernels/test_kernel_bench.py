"""`kimi-local bench kernels` on tiny shapes: every figure is measured, finite and consistent with its ratio."""

from __future__ import annotations

import json
import math

from kimi_local.cli import main
from kimi_local.kernels import bench

TINY = bench.BenchSizes(hidden=256, inter=128, experts_per_token=3, prefill_tokens=(1, 17),
                        bandwidth_bytes=4 << 20, rotation_bytes=1 << 20, rounds=1)


def test_benchmark_reports_every_figure():
    r = bench.run_benchmark(TINY, threads=2)
    for key in ("read_bandwidth_gbps", "decode_gbps", "decode_vs_bandwidth", "decode_vs_torch_bf16",
                "torch_bf16_decode_gweights_per_s"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert math.isclose(r["decode_vs_bandwidth"], r["decode_gbps"] / r["read_bandwidth_gbps"])
    assert set(r["prefill_gflops"]) == set(r["prefill_vs_torch_fp32"]) == {"1", "17"}
    for tokens, gflops in r["prefill_gflops"].items():
        assert math.isclose(r["prefill_vs_torch_fp32"][tokens], gflops / r["torch_fp32_prefill_gflops"][tokens])
    text = bench.format_report(r)
    assert "read bandwidth" in text and "17 tokens" in text
    json.dumps(r)


def test_cli_runs_the_kernel_bench(monkeypatch, capsys):
    monkeypatch.setattr(bench, "QUICK", TINY)
    assert main(["bench", "kernels", "--quick", "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threads"] == 1 and out["decode_gbps"] > 0 and "256" not in out["prefill_gflops"]
