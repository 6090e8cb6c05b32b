"""LLVM IR building blocks for the CPU kernels' hand-vectorized loops (`cpu_decode`, `cpu_simd`).

The loops are written as Numba intrinsics: Python functions that emit LLVM IR with explicit vector types, which
LLVM legalizes to the machine's registers. These helpers are the vocabulary they share: vector types and
loads, fused multiply-add, prefetch, reductions, and the type checks of the intrinsics' arguments.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils

I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()


def vector(element: ir.Type, count: int) -> ir.VectorType:
    return ir.VectorType(element, count)


def load_vector(builder, base_ptr, offset, vtype: ir.VectorType, align: int):
    ptr = builder.gep(base_ptr, [offset])
    return builder.load(builder.bitcast(ptr, vtype.as_pointer()), align=align)


def call_intrinsic(builder, name: str, return_type: ir.Type, args):
    """Call the LLVM intrinsic `name` (declared on first use) with `args`."""
    fnty = ir.FunctionType(return_type, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def fma(builder, a, b, c):
    return call_intrinsic(builder, f"llvm.fma.v{a.type.count}f32", a.type, [a, b, c])


def prefetch_l2(builder, ptr):
    """llvm.prefetch(read, locality 2 = keep in L2 and below, data)."""
    i8p = I8.as_pointer()
    call_intrinsic(builder, "llvm.prefetch.p0", ir.VoidType(),
                   [builder.bitcast(ptr, i8p), ir.Constant(I32, 0), ir.Constant(I32, 2), ir.Constant(I32, 1)])


def concat(builder, parts):
    """One vector of the parts' lanes, in order (the parts all of one type, a power-of-two count of them)."""
    while len(parts) > 1:
        n = parts[0].type.count
        mask = ir.Constant(vector(I32, 2 * n), list(range(2 * n)))
        parts = [builder.shuffle_vector(a, b, mask) for a, b in zip(parts[::2], parts[1::2])]
    return parts[0]


def horizontal_sum(builder, vec):
    """Pairwise tree sum of a float vector's lanes (fixed order: deterministic)."""
    width = vec.type.count
    while width > 1:
        half = width // 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(vector(I32, half), list(range(half))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(vector(I32, half), list(range(half, width))))
        vec = builder.fadd(lo, hi)
        width = half
    return builder.extract_element(vec, ir.Constant(I32, 0))


def splat(builder, scalar, count: int):
    vec = builder.insert_element(ir.Constant(vector(F32, count), None), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(vector(I32, count), [0] * count))


def as_intp(context, builder, value, value_type):
    return context.cast(builder, value, value_type, types.intp)


def is_c_array(t, dtype, ndim) -> bool:
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == ndim and t.layout == "C"
