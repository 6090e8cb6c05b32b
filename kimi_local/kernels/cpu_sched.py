"""Dynamic work sharing inside a Numba `prange`: a shared atomic counter hands out work items (weight rows).

`prange` splits its iterations evenly and up front. The MoE kernel's items all cost the same, so that would be
balanced on an idle machine, but one preempted thread (the model's own torch threads compute the shared
expert at the same time, and other processes run too) then stalls the whole phase. Instead each thread runs
one `prange` iteration that keeps taking the next item number until none are left:

    counter = np.zeros(1, np.int64)
    for worker in prange(num_workers):
        item = next_item(counter)
        while item < num_items:
            ...
            item = next_item(counter)
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from kimi_local.kernels.cpu_jit import jit

ITEMS_PER_THREAD = 4  # row items per thread and parallel loop: enough for a preempted thread to fall behind
ROW_ALIGN = 16  # items start at multiples of this (even, for the GEMV's row pairs)


@intrinsic
def _fetch_add(typingctx, counter):
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(counter), codegen


def next_item(counter: np.ndarray) -> int:
    """counter[0] before an atomic increment (plain Python: there are no threads to race)."""
    item = int(counter[0])
    counter[0] = item + 1
    return item


@overload(next_item)
def _next_item_jit(counter):
    return lambda counter: _fetch_add(counter)


@jit
def item_bounds(item, num_items, num_rows):
    """Rows [begin, end) of work item `item` of `num_items`: an even split, boundaries at ROW_ALIGN multiples."""
    begin = item * num_rows // num_items // ROW_ALIGN * ROW_ALIGN
    end = num_rows if item == num_items - 1 else (item + 1) * num_rows // num_items // ROW_ALIGN * ROW_ALIGN
    return begin, end
