"""The CPU kernels compiled for a plain AVX2 core (Haswell: no AVX-512, so 8-lane vectors and the half route
for every dot), whatever this machine has: the code path of most desktop CPUs. In a subprocess with its own
Numba cache, so the rest of the session keeps the machine code for this machine."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.kernels.test_cpu_nojit import ROOT

CHECK = """
from kimi_local.kernels import cpu_simd
assert (cpu_simd.LANES, cpu_simd.DOT_STEP, cpu_simd.ONE_TOKEN_TABLES) == (8, 32, False), cpu_simd.LANES
from tests.kernels.test_cpu_nojit import check_small_cases
check_small_cases(compiled=True)
print('ok')
"""


def test_kernels_compiled_for_avx2(tmp_path):
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
