"""Anonymous memory for weight streams, on huge pages where the kernel allows them.

The CPU expert kernels stream hundreds of MB per token. On 4 KiB pages that is a TLB miss every 4 KiB (in a
virtual machine, a two-level page walk each); on 2 MiB pages almost none. Linux gives anonymous memory huge
pages when transparent huge pages are `always`, or `madvise` and the range was advised, and only for pages
first touched *after* the advice: a mapping populated at `mmap` time (MAP_POPULATE) gets small pages. So the
order here is map, advise, then touch every page. The same buffer serves the RAM expert cache (`cache/slots.py`)
and the memory-bandwidth probes, so that a kernel's read rate and the machine's are measured on the same kind
of memory.
"""

from __future__ import annotations

import errno
import mmap

import numpy as np

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14; Python names it from 3.13


def anonymous_buffer(nbytes: int, populate: bool = True) -> tuple[mmap.mmap, np.ndarray]:
    """A private anonymous mapping of `nbytes` (> 0) advised for huge pages, and a uint8 view of it. With
    `populate`, every page is faulted in now (the advice first), so later reads never fault."""
    if nbytes < 1:
        raise ValueError(f"need a positive size, got {nbytes}")
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # transparent huge pages disabled or unsupported: small pages, same contents
            pass
    array = np.frombuffer(buffer, dtype=np.uint8)
    if populate:
        try:
            buffer.madvise(MADV_POPULATE_WRITE)
        except OSError as exc:
            if exc.errno == errno.ENOMEM:  # over a memory limit: say so rather than fault pages until killed
                raise MemoryError(f"cannot populate {nbytes} bytes of anonymous memory: {exc}") from exc
            if exc.errno != errno.EINVAL:
                raise
            array[:: mmap.PAGESIZE] = 0  # a kernel without MADV_POPULATE_WRITE (< 5.14): one byte per page
    return buffer, array
