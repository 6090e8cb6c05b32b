"""Dynamic work sharing: item bounds tile the rows, and the shared counter hands every item out exactly once."""

from __future__ import annotations

import numpy as np
import pytest
from numba import prange

from kimi_local.kernels.cpu_jit import parallel_jit
from kimi_local.kernels.cpu_sched import ROW_ALIGN, item_bounds, next_item


@parallel_jit
def _take_all(num_items, num_workers, taken):
    counter = np.zeros(1, np.int64)
    for worker in prange(num_workers):
        item = next_item(counter)
        while item < num_items:
            taken[worker, item] += 1  # each worker writes its own row: no race in the record itself
            item = next_item(counter)


@pytest.mark.parametrize("num_items,num_rows", [(1, 7), (8, 2048), (8, 7168), (16, 100), (8, 20)])
def test_items_tile_the_rows_at_aligned_boundaries(num_items, num_rows):
    bounds = [item_bounds(i, num_items, num_rows) for i in range(num_items)]
    assert bounds[0][0] == 0 and bounds[-1][1] == num_rows
    for (b0, e0), (b1, _) in zip(bounds, bounds[1:]):
        assert e0 == b1 and b0 <= e0 and b1 % ROW_ALIGN == 0


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_every_item_is_handed_out_once(workers):
    taken = np.zeros((workers, 5000), np.int64)
    _take_all(5000, workers, taken)
    assert (taken.sum(axis=0) == 1).all()
