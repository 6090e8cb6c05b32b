"""Array views from memory addresses: how one kernel call receives the weights of many experts.

A MoE layer call hands the kernel up to 8 x T experts, six arrays each. Numba's typed lists cost about 25 us per
list plus 3 us per array to build on every call; a table of addresses costs under 1 us per array, so the
wrapper passes `int64 [E, 6]` addresses (`address_of`) and the kernel rebuilds each view in place
(`u8_matrix_at`, `f32_matrix_at`: no copy, no allocation). The wrapper validates every array first (dtype,
shape, C order, alignment) and keeps them alive for the call; the kernels only read through these views.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload


def address_of(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _pointer_intrinsic(element):
    @intrinsic
    def pointer(typingctx, address):
        if not isinstance(address, types.Integer):
            return None
        pointer_type = types.CPointer(element)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer_type))

        return pointer_type(address), codegen

    return pointer


_u8_pointer = _pointer_intrinsic(types.uint8)
_f32_pointer = _pointer_intrinsic(types.float32)


def u8_matrix_at(address, rows, cols):
    """The uint8 C-order [rows, cols] array at `address`."""
    return np.ctypeslib.as_array(ctypes.cast(int(address), ctypes.POINTER(ctypes.c_uint8)), (int(rows), int(cols)))


def f32_matrix_at(address, rows, cols):
    """The float32 C-order [rows, cols] array at `address`."""
    return np.ctypeslib.as_array(ctypes.cast(int(address), ctypes.POINTER(ctypes.c_float)), (int(rows), int(cols)))


@overload(u8_matrix_at)
def _u8_matrix_at_jit(address, rows, cols):
    return lambda address, rows, cols: numba.carray(_u8_pointer(address), (rows, cols))


@overload(f32_matrix_at)
def _f32_matrix_at_jit(address, rows, cols):
    return lambda address, rows, cols: numba.carray(_f32_pointer(address), (rows, cols))
