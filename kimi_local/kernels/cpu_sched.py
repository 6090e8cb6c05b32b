"""Dynamic work sharing inside a Numba `prange`: shared atomic counters hand out work, and completion
counters let one parallel region run work that depends on other work.

`prange` splits its iterations evenly and up front. The kernels' work items all cost the same, so that would
be balanced on an idle machine, but one preempted thread (the model's own torch threads compute the shared
expert at the same time, and other processes run too) then stalls the whole loop. Instead each thread runs one
`prange` iteration that keeps claiming work until none is left:

    cursor = np.zeros(1, np.int64)
    for worker in prange(num_workers):
        begin, end = claim_rows(cursor, 0, num_rows, num_workers, min_rows)
        while begin < end:
            ...
            begin, end = claim_rows(cursor, 0, num_rows, num_workers, min_rows)

`claim_rows` hands out guided runs of rows: each claim takes a share of what is left (half of it split over
the workers), so runs start long (each thread streams long stretches of weight bytes, where the hardware
prefetchers work best) and shrink towards the end, where the threads then finish within one short run of
each other instead of one long item. `next_item` hands out numbered items one at a time.

A region that has two dependent phases (the MoE's gate/up, then down) skips the barrier between them: work of
phase 1 adds what it finished to a completion counter (`mark_done`), work of phase 2 waits for the counts it
needs (`wait_done`). Phase 2 work is claimed only after every phase 1 piece has been claimed by a running
thread, so a wait always ends. The counter updates are sequentially consistent atomics and the wait is an
acquire load: what phase 1 wrote before `mark_done` is visible to phase 2 after `wait_done`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from kimi_local.kernels.cpu_jit import jit

ITEMS_PER_THREAD = 4  # numbered items per thread and parallel loop: enough for a preempted thread to fall behind
ROW_ALIGN = 16  # runs and items start at multiples of this (even, for the GEMV's row pairs)
SHARE = 2  # a claim takes what is left / (SHARE * workers)
MIN_RUN_BYTES = 512 << 10  # weight bytes in the shortest guided run (a run starts cold: not much shorter)


def _element_pointer(context, builder, array_type, array, index, index_type):
    array = context.make_array(array_type)(context, builder, array)
    index = context.cast(builder, index, index_type, types.intp)
    return builder.gep(array.data, [index])


def _is_counter(counter) -> bool:
    return isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1


@intrinsic
def _fetch_add(typingctx, counter, index, amount):
    if not (_is_counter(counter) and isinstance(index, types.Integer) and isinstance(amount, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, value, "seq_cst")

    return types.int64(counter, index, amount), codegen


@intrinsic
def _load_acquire(typingctx, counter, index):
    if not (_is_counter(counter) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(counter, index), codegen


@intrinsic
def _spin_pause(typingctx):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


def fetch_add(counter: np.ndarray, index: int, amount: int) -> int:
    """counter[index] before an atomic `+= amount` (plain Python: there are no threads to race)."""
    old = int(counter[index])
    counter[index] = old + amount
    return old


@overload(fetch_add)
def _fetch_add_jit(counter, index, amount):
    return lambda counter, index, amount: _fetch_add(counter, index, amount)


def next_item(counter: np.ndarray) -> int:
    """counter[0] before an atomic increment."""
    return fetch_add(counter, 0, 1)


@overload(next_item)
def _next_item_jit(counter):
    return lambda counter: _fetch_add(counter, 0, 1)


@jit
def item_bounds(item, num_items, num_rows):
    """Rows [begin, end) of work item `item` of `num_items`: an even split, boundaries at ROW_ALIGN multiples."""
    begin = item * num_rows // num_items // ROW_ALIGN * ROW_ALIGN
    end = num_rows if item == num_items - 1 else (item + 1) * num_rows // num_items // ROW_ALIGN * ROW_ALIGN
    return begin, end


@jit
def min_run_rows(row_bytes):
    """The shortest guided run for rows of `row_bytes`: MIN_RUN_BYTES of weights."""
    return max(1, MIN_RUN_BYTES // row_bytes)


@jit
def claim_rows(cursors, slot, num_rows, num_workers, min_rows):
    """The next guided run [begin, end) of rows 0..num_rows counted by cursors[slot]: (what is left) /
    (SHARE * num_workers) rows, at least `min_rows`, a ROW_ALIGN multiple (the last run takes the rest).
    Returns an empty run once all rows are taken. The size comes from a plain read of the cursor: a stale
    read only makes a run a little longer, never overlapping (the atomic add decides where it starts)."""
    left = num_rows - cursors[slot]
    if left <= 0:
        return num_rows, num_rows
    size = max(min_rows, left // (SHARE * num_workers))
    size = (size + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    begin = fetch_add(cursors, slot, size)
    return min(begin, num_rows), min(begin + size, num_rows)


def mark_done(counter: np.ndarray, index: int, amount: int) -> None:
    """counter[index] += amount, atomically, after everything this thread wrote before it."""
    fetch_add(counter, index, amount)


@overload(mark_done)
def _mark_done_jit(counter, index, amount):
    def impl(counter, index, amount):
        _fetch_add(counter, index, amount)

    return impl


def wait_done(counter: np.ndarray, index: int, target: int) -> None:
    """Return once counter[index] >= target. Without the JIT there is one thread and the work ran in
    order, so anything else is a bug."""
    if counter[index] < target:
        raise RuntimeError(f"work waits for counter {index} to reach {target}, at {counter[index]}: "
                           f"it would never get there")


@overload(wait_done)
def _wait_done_jit(counter, index, target):
    def impl(counter, index, target):
        while _load_acquire(counter, index) < target:
            _spin_pause()

    return impl
