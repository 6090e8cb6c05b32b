"""The weight-stream allocation: a zeroed, writable, page-aligned mapping, populated before it is returned."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from kimi_local import hugepages
from kimi_local.hugepages import anonymous_buffer


def _resident_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status")


@pytest.mark.parametrize("populate", [True, False])
def test_buffer_is_zeroed_writable_and_page_aligned(populate):
    buffer, array = anonymous_buffer(3 * mmap.PAGESIZE + 5, populate=populate)
    assert array.size == len(buffer) == 3 * mmap.PAGESIZE + 5 and array.dtype == np.uint8
    assert array.ctypes.data % mmap.PAGESIZE == 0 and not array.any()
    array[:] = 7
    assert buffer[: mmap.PAGESIZE] == b"\x07" * mmap.PAGESIZE


def test_populate_faults_the_pages_in_at_once():
    before = _resident_kib()
    _, array = anonymous_buffer(64 << 20, populate=True)
    assert _resident_kib() - before >= 60 << 10  # ~64 MiB resident before anything reads or writes it
    assert array[::4096].sum() == 0


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        anonymous_buffer(0)


def test_without_populate_advice_the_pages_are_touched_instead(monkeypatch):
    monkeypatch.setattr(hugepages, "MADV_POPULATE_WRITE", 9999)  # an advice the kernel refuses (EINVAL)
    before = _resident_kib()
    _, array = hugepages.anonymous_buffer(32 << 20, populate=True)
    assert _resident_kib() - before >= 30 << 10 and not array.any()
