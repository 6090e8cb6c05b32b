"""How the CPU expert kernels are compiled: the one place that picks Numba options and fastmath flags.

Every kernel is compiled with `cache=True` (the machine code lands beside the source in `__pycache__`, so a new
process does not recompile) and `nogil=True` (the model calls the routed experts from a worker thread while
torch runs the shared expert).

Fastmath is limited to what the kernels need to vectorize: `reassoc` lets LLVM split a dot product's sum over
several vector accumulators, `contract` fuses multiply-adds, `nsz` drops the signed-zero distinction. NaN and
infinity semantics stay IEEE (no `nnan`/`ninf`), so a broken weight shows up as NaN instead of silently
becoming a number.

Numba's on-disk cache keys a function on its own file only, but a kernel's machine code includes every kernel it
calls, from other files: after an edit of `cpu_simd.py` (or an upgrade that changes it), `cpu_moe`'s cached
code would keep the old loops, and compute with them. So the cache is stamped with a digest of all the kernel
sources and dropped whole when they change (`drop_stale_machine_code`, run when this module is imported, before
anything compiles; the kernel tests do the same for their own cached helpers).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

import numba

log = logging.getLogger(__name__)
KERNELS = Path(__file__).resolve().parent

FASTMATH = frozenset({"reassoc", "contract", "nsz"})

# Parallel kernels run from two threads at once (the routed experts on a worker thread, the resident fp8 linears
# on the caller's). The OpenMP and TBB layers allow that; Numba's last-resort 'workqueue' layer aborts the
# process on concurrent use, so it is ruled out here (a clear error at the first parallel call instead) unless
# the user chose a layer with NUMBA_THREADING_LAYER.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "threadsafe"

jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=set(FASTMATH))
parallel_jit = functools.partial(numba.njit, cache=True, nogil=True, parallel=True, fastmath=set(FASTMATH))


def sources_digest() -> str:
    """sha256 over the kernel modules' sources (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(KERNELS.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def drop_stale_machine_code(folder: Path) -> None:
    """Delete the Numba cache files in `folder`/__pycache__ unless they were made from the current kernel sources
    (a stamp file there says which). A folder that cannot be written is left alone: Numba cannot cache there
    either, and then keeps its code in memory only or in NUMBA_CACHE_DIR, which the user sets and clears."""
    cache = folder / "__pycache__"
    stamp = cache / "kernel-sources.sha256"
    current = sources_digest()
    try:
        if stamp.is_file() and stamp.read_text().strip() == current:
            return
        stale = list(cache.glob("*.nbi")) + list(cache.glob("*.nbc"))
        for path in stale:
            path.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(current + "\n")
        if stale:
            log.info("kernel sources changed: dropped %d cached Numba files in %s", len(stale), cache)
    except OSError as exc:
        log.debug("cannot check Numba's cache in %s: %s", cache, exc)


drop_stale_machine_code(KERNELS)
