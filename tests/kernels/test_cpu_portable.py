"""The CPU kernels compiled for other cores than this one: a plain AVX2 core (Haswell: 8-lane vectors, the half
route for every dot; most desktop CPUs) and an AVX-512 core without VBMI (Skylake-X: 16 lanes, the half route),
whatever this machine has. In subprocesses with their own Numba cache, so the rest of the session keeps the
machine code for this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.kernels.test_cpu_nojit import ROOT

CHECK = """
from kimi_local.kernels import cpu_simd
got = (cpu_simd.LANES, cpu_simd.DOT_STEP, cpu_simd.ONE_TOKEN_TABLES)
assert got == EXPECTED, got
from tests.kernels.test_cpu_nojit import check_small_cases
check_small_cases(compiled=True)
print('ok')
"""


@pytest.mark.parametrize("cpu,features,expected", [
    ("haswell", None, (8, 32, False)),
    ("skylake-avx512", "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx2,+fma,+f16c", (16, 64, False)),
])
def test_kernels_compiled_for_another_core(tmp_path, cpu, features, expected):
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    if features:
        env["NUMBA_CPU_FEATURES"] = features
    code = f"EXPECTED = {expected!r}" + CHECK
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
