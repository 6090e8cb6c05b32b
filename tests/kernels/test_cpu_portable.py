"""The CPU kernels compiled for other cores than this one (Numba's NUMBA_CPU_NAME and NUMBA_CPU_FEATURES): a plain
AVX2 core (Haswell: 8-lane vectors, the half route for every dot; most desktop CPUs) and an AVX-512 core without
VBMI (Skylake-X: 16 lanes, the half route), whatever this machine has; and with NUMBA_ENABLE_AVX=0, which makes
Numba drop the AVX family from this machine's features. In subprocesses with their own Numba cache, so the rest
of the session keeps the machine code for this machine."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.kernels.test_cpu_nojit import ROOT

CHECK = """
from kimi_local.kernels import cpu_simd
got = (cpu_simd.LANES, cpu_simd.DOT_STEP, cpu_simd.ONE_TOKEN_TABLES)
assert got == EXPECTED, got
from tests.kernels.test_cpu_nojit import check_small_cases
check_small_cases(compiled=True)
print('ok')
"""


TARGETS = {  # name: (Numba settings, expected (LANES, DOT_STEP, ONE_TOKEN_TABLES))
    # No features named: the model's own (AVX2, FMA, F16C).
    "haswell": ({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}, (8, 32, False)),
    "skylake-avx512": ({"NUMBA_CPU_NAME": "skylake-avx512",
                        "NUMBA_CPU_FEATURES": "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx2,+fma,+f16c"},
                       (16, 64, False)),
    "no-avx": ({"NUMBA_ENABLE_AVX": "0"}, (8, 32, False)),
}


def test_kernels_compiled_for_other_cores(tmp_path):
    """The three builds at once (each compiles every kernel: ~25 s of one core)."""
    procs = {}
    for name, (settings, expected) in TARGETS.items():
        env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / name), "PYTHONWARNINGS": "ignore"}
        for key in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX", "NUMBA_DISABLE_JIT"):
            env.pop(key, None)
        env.update(settings)
        procs[name] = subprocess.Popen([sys.executable, "-c", f"EXPECTED = {expected!r}" + CHECK], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failures = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0 or not out.strip().endswith("ok"):
            failures.append(f"{name}: {out}{err}")
    assert not failures, "\n".join(failures)
