"""How the CPU expert kernels are compiled: the one place that picks Numba options and fastmath flags.

Every kernel is compiled with `cache=True` (the machine code lands beside the source in `__pycache__`, so a new
process does not recompile) and `nogil=True` (the model calls the routed experts from a worker thread while
torch runs the shared expert).

Fastmath is limited to what the kernels need to vectorize: `reassoc` lets LLVM split a dot product's sum over
several vector accumulators, `contract` fuses multiply-adds, `nsz` drops the signed-zero distinction. NaN and
infinity semantics stay IEEE (no `nnan`/`ninf`), so a broken weight shows up as NaN instead of silently
becoming a number.

Numba's on-disk cache keys a function on its own file only: after editing `cpu_simd.py` (the hand-written
LLVM loops), delete the `__pycache__/*.nbi|*.nbc` files of the kernel modules that use it, or their cached
machine code keeps the old loops. A reinstall rewrites every file and invalidates everything.
"""

from __future__ import annotations

import functools
import os

import numba

FASTMATH = frozenset({"reassoc", "contract", "nsz"})

# Parallel kernels run from two threads at once (the routed experts on a worker thread, the resident fp8 linears
# on the caller's). The OpenMP and TBB layers allow that; Numba's last-resort 'workqueue' layer aborts the
# process on concurrent use, so it is ruled out here (a clear error at the first parallel call instead) unless
# the user chose a layer with NUMBA_THREADING_LAYER.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"

jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=set(FASTMATH))
parallel_jit = functools.partial(numba.njit, cache=True, nogil=True, parallel=True, fastmath=set(FASTMATH))
