"""The CPU kernels' bodies as plain Python (`NUMBA_DISABLE_JIT=1`, as coverage tools run them): every kernel
against its reference on small shapes, in a subprocess so the rest of the session keeps compiled kernels."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def check_small_cases(compiled: bool = False) -> None:
    """Every kernel against its reference on small shapes (as plain Python unless `compiled`)."""
    import numba

    from kimi_local.kernels import cpu_gemm, cpu_gemv, cpu_moe
    from kimi_local.kernels.cpu_decode import HALF_BIAS_SHIFT, e4m3_half_bits, half_to_float
    from kimi_local.model.fp8 import E4M3_TABLE
    from tests.kernels.cpu_cases import random_expert, random_fp8
    from tests.kernels.test_cpu_gemv import assert_close
    from tests.kernels.test_cpu_moe import routing

    assert numba.config.DISABLE_JIT != compiled and isinstance(cpu_gemv.gemv_rows, types.FunctionType) != compiled
    for code in range(256):
        if code & 0x7F != 0x7F:
            assert half_to_float(e4m3_half_bits(np.uint8(code))) * np.float32(HALF_BIAS_SHIFT) == E4M3_TABLE[code]
    rng = np.random.default_rng(0)
    for rows, cols in [(1, 1), (3, 40), (130, 70)] + ([(257, 300)] if compiled else []):
        codes, scales = random_fp8(rng, (rows, cols))
        x = rng.standard_normal(cols).astype(np.float32)
        assert_close(cpu_gemv.fp8_gemv(codes, scales, x), cpu_gemv.fp8_gemv_reference(codes, scales, x), cols)
        x3 = rng.standard_normal((3, cols)).astype(np.float32)
        assert_close(cpu_gemv.fp8_gemv(codes, scales, x3), cpu_gemv.fp8_gemv_reference(codes, scales, x3), cols)
        xs = rng.standard_normal((5, cols)).astype(np.float32)
        assert_close(cpu_gemm.fp8_gemm(codes, scales, xs), cpu_gemm.fp8_gemm_reference(codes, scales, xs), cols)
        out = np.empty((rows, cols), np.float32)
        assert np.array_equal(cpu_gemm.dequantize_rows(codes, scales, 0, rows, out), E4M3_TABLE[codes] * np.repeat(
            np.repeat(scales, 128, axis=0), 128, axis=1)[:rows, :cols])
    expert_ids = np.array([4, 9, 2])
    experts = [random_expert(rng, 40, 36) for _ in expert_ids]
    for num_tokens, skew in [(1, 0.0), (cpu_moe.GEMV_MAX_TOKENS + 4, 1.0)]:  # GEMV path only; both paths
        ids, weights = routing(rng, num_tokens, 2, expert_ids, skew)
        tiled = np.diff(cpu_moe.group_routing(ids, weights, expert_ids).panel_offsets) > 0
        assert tiled.any() == (skew > 0)
        x = rng.standard_normal((num_tokens, 36)).astype(np.float32)
        got = cpu_moe.moe_forward(x, ids, weights, expert_ids, experts)
        assert_close(got, cpu_moe.moe_forward_reference(x, ids, weights, expert_ids, experts), 76)


def test_kernels_run_as_plain_python():
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONWARNINGS": "ignore"}
    code = "from tests.kernels.test_cpu_nojit import check_small_cases; check_small_cases(); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
