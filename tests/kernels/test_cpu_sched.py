"""Dynamic work sharing: item bounds tile the rows, the shared counter hands every item out exactly once,
guided runs tile the rows and shrink, and phase 2 work sees what phase 1 wrote before marking it done."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import prange

from kimi_local.kernels.cpu_jit import jit, parallel_jit
from kimi_local.kernels.cpu_sched import (
    ROW_ALIGN, SHARE, claim_rows, item_bounds, mark_done, next_item, wait_done,
)


@parallel_jit
def _take_all(num_items, num_workers, taken):
    counter = np.zeros(1, np.int64)
    for worker in prange(num_workers):
        item = next_item(counter)
        while item < num_items:
            taken[worker, item] += 1  # each worker writes its own row: no race in the record itself
            item = next_item(counter)


@parallel_jit
def _claim_all(num_rows, num_workers, min_rows, taken):
    cursors = np.zeros(2, np.int64)
    for worker in prange(num_workers):
        begin, end = claim_rows(cursors, 1, num_rows, num_workers, min_rows)
        while begin < end:
            taken[worker, begin:end] += 1
            begin, end = claim_rows(cursors, 1, num_rows, num_workers, min_rows)


@jit
def _runs(num_rows, num_workers, min_rows):
    """The runs one thread gets when it claims alone."""
    cursors = np.zeros(1, np.int64)
    runs = []
    begin, end = claim_rows(cursors, 0, num_rows, num_workers, min_rows)
    while begin < end:
        runs.append((begin, end))
        begin, end = claim_rows(cursors, 0, num_rows, num_workers, min_rows)
    return runs


@parallel_jit
def _two_phases(num_pieces, num_workers, values, sums):
    """Phase 1 writes values[i] = i + 1 piece by piece; phase 2 piece i waits for piece i, reads it back."""
    cursors = np.zeros(2, np.int64)
    done = np.zeros(num_pieces, np.int64)
    for _ in prange(num_workers):
        i = next_item(cursors[0:1])
        while i < num_pieces:
            for j in range(values.shape[1]):
                values[i, j] = i + 1
            mark_done(done, i, 1)
            i = next_item(cursors[0:1])
        i = next_item(cursors[1:2])
        while i < num_pieces:
            wait_done(done, i, 1)
            sums[i] = values[i].sum()
            i = next_item(cursors[1:2])


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


@pytest.mark.parametrize("num_rows,workers,min_rows", [(1, 2, 1), (7, 1, 1), (32768, 2, 80), (57344, 2, 256),
                                                      (1000, 4, 16), (100, 2, 1000)])
def test_guided_runs_tile_the_rows_and_shrink(num_rows, workers, min_rows):
    runs = _runs(num_rows, workers, min_rows)
    assert runs[0][0] == 0 and runs[-1][1] == num_rows
    for (b0, e0), (b1, _) in zip(runs, runs[1:]):
        assert e0 == b1 and b1 % ROW_ALIGN == 0
    sizes = [e - b for b, e in runs]
    assert all(s >= min(min_rows, num_rows - b) for s, (b, _) in zip(sizes, runs))
    assert sizes[0] <= max(min_rows, num_rows // (SHARE * workers)) + ROW_ALIGN
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True)  # long runs first, short ones at the end


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_every_guided_row_is_handed_out_once(workers):
    taken = np.zeros((workers, 20000), np.int64)
    _claim_all(20000, workers, 16, taken)
    assert (taken.sum(axis=0) == 1).all()


def test_phase_two_sees_what_phase_one_marked_done():
    workers = min(2, numba.config.NUMBA_NUM_THREADS)
    values = np.zeros((64, 1000), np.int64)
    sums = np.zeros(64, np.int64)
    _two_phases(64, workers, values, sums)
    assert sums.tolist() == [(i + 1) * 1000 for i in range(64)]


def test_a_wait_that_cannot_end_raises_without_the_jit():
    done = np.zeros(2, np.int64)
    mark_done(done, 1, 3)
    wait_done(done, 1, 3)  # Python twins: satisfied, returns
    with pytest.raises(RuntimeError, match="never"):
        wait_done(done, 0, 1)
