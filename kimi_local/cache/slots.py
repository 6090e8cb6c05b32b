"""The RAM tier's memory: one anonymous mapping cut into equal, page-aligned slots, allocated once.

Every routed expert of a model has the same size, so fixed slots never fragment, and reusing them means the
process never allocates (or page-faults) per read after the first fill. Resident memory is bounded by
`num_slots * slot_bytes` plus a fixed overhead, whatever is read. The mapping is private and anonymous:
O_DIRECT reads land in it directly, and the page cache is not involved.
"""

from __future__ import annotations

import mmap

import numpy as np


class SlotArena:
    def __init__(self, num_slots: int, slot_bytes: int, populate: bool = False):
        if num_slots < 1 or slot_bytes < 1 or slot_bytes % mmap.PAGESIZE:
            raise ValueError(f"need num_slots >= 1 and a page-multiple slot size, got {num_slots} x {slot_bytes}")
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if populate and hasattr(mmap, "MAP_POPULATE"):
            flags |= mmap.MAP_POPULATE  # fault every page in now rather than during the first reads
        self._mmap = mmap.mmap(-1, num_slots * slot_bytes, flags=flags)
        if hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self._mmap.madvise(mmap.MADV_HUGEPAGE)  # fewer TLB misses for the kernels' weight streams
            except OSError:
                pass
        self.memory = memoryview(self._mmap)
        self.array = np.frombuffer(self._mmap, dtype=np.uint8)  # the same bytes, for numpy views
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out slot 0 first

    @property
    def nbytes(self) -> int:
        return self.num_slots * self.slot_bytes

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int | None:
        return self._free.pop() if self._free else None

    def free(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} outside [0, {self.num_slots})")
        self._free.append(slot)

    def slot_view(self, slot: int) -> memoryview:
        base = slot * self.slot_bytes
        return self.memory[base : base + self.slot_bytes]

    def base(self, slot: int) -> int:
        return slot * self.slot_bytes
