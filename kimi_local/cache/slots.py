"""The RAM tier's memory: one anonymous mapping cut into equal, page-aligned slots, allocated once.

Every routed expert of a model has the same size, so fixed slots never fragment, and reusing them means the
process never allocates (or page-faults) per read after the first fill. Resident memory is bounded by
`num_slots * slot_bytes` plus a fixed overhead, whatever is read. The mapping is private and anonymous:
O_DIRECT reads land in it directly, and the page cache is not involved.
"""

from __future__ import annotations

import mmap

from kimi_local.hugepages import anonymous_buffer


class SlotArena:
    def __init__(self, num_slots: int, slot_bytes: int, populate: bool = False):
        if num_slots < 1 or slot_bytes < 1 or slot_bytes % mmap.PAGESIZE:
            raise ValueError(f"need num_slots >= 1 and a page-multiple slot size, got {num_slots} x {slot_bytes}")
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes
        # Huge pages where allowed (the kernels' weight streams then miss the TLB far less); with `populate`,
        # every page is faulted in now rather than during the first reads.
        self._mmap, self.array = anonymous_buffer(num_slots * slot_bytes, populate)
        self.memory = memoryview(self._mmap)
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
