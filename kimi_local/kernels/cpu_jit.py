"""How the CPU expert kernels are compiled: the one place that picks Numba options and fastmath flags.

Every kernel is compiled with `cache=True` (the machine code is kept on disk, so a new process does not
recompile) and `nogil=True` (the model calls the routed experts from a worker thread while torch runs the shared
expert).

Fastmath is limited to what the kernels need to vectorize: `reassoc` lets LLVM split a dot product's sum over
several vector accumulators, `contract` fuses multiply-adds, `nsz` drops the signed-zero distinction. NaN and
infinity semantics stay IEEE (no `nnan`/`ninf`), so a broken weight shows up as NaN instead of silently
becoming a number.

**Cache freshness.** Numba keys a cached function on its own source file, but a kernel's machine code includes
every kernel it calls, from other files (and constants such as the fp8 block size): after an edit or an
upgrade of `cpu_simd.py`, `cpu_moe`'s cached code would keep computing with the old loops. So the functions
compiled here carry a mark, and for them Numba's cache locators (wherever the cache lives: NUMBA_CACHE_DIR,
the package's `__pycache__`, the user-wide cache of a read-only install) use a source stamp that also holds a
digest of all the kernel sources, taken when this module is imported. An entry made from other sources then
simply does not match and is recompiled; nothing is deleted, and a process that keeps running on sources it
imported before an upgrade stamps what it compiles with those sources' digest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba
from numba.core import caching

FASTMATH = frozenset({"reassoc", "contract", "nsz"})
KERNELS = Path(__file__).resolve().parent
# Every source whose code or constants Numba compiles into the kernels.
KERNEL_SOURCES = tuple(sorted(KERNELS.glob("cpu_*.py"))) + (KERNELS.parent / "model" / "fp8.py",)
MARK = "_kimi_local_kernel"  # set on the Python functions compiled here

# Parallel kernels run from two threads at once (the routed experts on a worker thread, the resident fp8 linears
# on the caller's). The OpenMP and TBB layers allow that; Numba's last-resort 'workqueue' layer aborts the
# process on concurrent use, so it is ruled out here (a clear error at the first parallel call instead) unless
# the user chose a layer with NUMBA_THREADING_LAYER.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"


def sources_digest(paths=KERNEL_SOURCES) -> str:
    """sha256 over the kernel sources (names and contents)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


SOURCES_DIGEST = sources_digest()


def _stamped(base: type) -> type:
    """`base` (one of Numba's cache locators), for marked functions only, with the kernel sources' digest in
    its source stamp."""

    class Locator(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not getattr(py_func, MARK, False):
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return super().get_source_stamp(), SOURCES_DIGEST

    Locator.__name__ = Locator.__qualname__ = f"KernelSources{base.__name__}"
    Locator.stamped = True
    return Locator


CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # (older Numba: _CacheImpl)


def _install_locators() -> None:
    """Put a stamped copy of each of Numba's locators in front of the originals (once per process)."""
    impl = CACHE_IMPL
    if not any(getattr(cls, "stamped", False) for cls in impl._locator_classes):
        impl._locator_classes = [_stamped(cls) for cls in impl._locator_classes] + list(impl._locator_classes)


_install_locators()


def _compiler(**options):
    def compile_kernel(fn):
        setattr(fn, MARK, True)  # before Numba picks the function's cache locator
        return numba.njit(cache=True, nogil=True, fastmath=set(FASTMATH), **options)(fn)

    return compile_kernel


jit = _compiler()
parallel_jit = _compiler(parallel=True)
