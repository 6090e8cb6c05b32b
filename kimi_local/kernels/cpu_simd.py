"""The e4m3 decode rule for CPUs, and the hand-vectorized inner loops every CPU expert kernel runs.

**Decoding e4m3 without a table.** An e4m3fn byte is `s eeee mmm` (exponent bias 7). Its sign put at bit 15 of
a 16-bit word and its other seven bits at bits 13..7, `s 0 eeee mmm 0000000`, make an IEEE half-precision
number (bias 15) with the same sign, mantissa and exponent field, so its value is exactly the e4m3 value times
2^-8, subnormals included (e4m3 subnormals, exponent 0, land on half subnormals). The hardware half to
float conversion (F16C `vcvtph2ps`, eight or sixteen lanes per instruction) then gives exact float32s, and the
2^8 goes into the block scale. Per byte that is a sign extension, a shift, a mask and a conversion, all
vectorized; no lookup table, no gather.

Why not shift straight into float32 bit positions (sign, exponent and mantissa into place, bias folded into
the scale)? It is exact too, but e4m3 subnormals then become float32 *denormals*, and on Intel cores every
multiply with a denormal operand takes a microcode assist: with random codes (1 in 16 is subnormal) that kernel
ran ten times slower here. The half route never feeds a denormal to the FMA units.

Codes 0x7f/0xff are NaN in e4m3fn. The checkpoint's quantizer saturates at +-448 and never writes them; this
decoder reads them as +-480 (what their bits mean as a half), it does not check for them.

**Why intrinsics.** LLVM vectorizes the plain Numba loops, but Numba's target prefers 256-bit vectors even on
AVX-512 cores, and a register-blocked tile (several rows by several tokens) is not something the loop
vectorizer builds. So the loops that carry all the arithmetic are written once in LLVM IR with explicit
vector types and legalized by LLVM to the machine's registers (AVX-512: zmm, AVX2: ymm, older: xmm):

* `e4m3_dot_RxT`: R rows of e4m3 codes dotted with T float32 vectors (T tokens), each code decoded once in
  registers for all T, each row prefetched ahead (the decode GEMV, and prefill for experts with few tokens);
* `e4m3_decode`: a row segment of codes to scaled float32 (the prefill GEMM's decode-once step);
* `f32_tile`: the prefill GEMM's micro-kernel in the BLAS broadcast form. Activations are transposed so that
  LANES tokens sit in one vector register; each decoded weight is broadcast and multiplied into TILE_ROWS
  accumulator registers (one per weight row), so the accumulators stay in registers for a whole K chunk and
  both operands come from L1.

Each has a plain-Python twin with the same contract: Numba calls the intrinsic (through `overload`), Python
calls the twin, so the kernels also run, slowly, with `NUMBA_DISABLE_JIT=1`.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from kimi_local.kernels.cpu_jit import jit

HALF_BIAS_SHIFT = 256.0  # e4m3 value = decoded half value * 2^8


def _has_avx512() -> bool:
    features = numba.config.CPU_FEATURES
    if features is None:
        features = "" if numba.config.CPU_NAME else llvm_binding.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


LANES = 16 if _has_avx512() else 8  # float32 lanes in one native vector register
# Micro-kernel tile: TILE_ROWS weight rows x LANES tokens, one accumulator register per row. 24 accumulators
# and two operands fit AVX-512's 32 registers, 12 fit AVX2's 16.
TILE_ROWS = 24 if LANES == 16 else 12
# Codes per row per loop step of the one-token e4m3 dot (its `length` must be a multiple): a whole cache line
# per row and step on AVX-512, so each line gets exactly one prefetch instruction.
DOT_STEP = 64 if LANES == 16 else 32
# Tokens one e4m3 dot pass serves: 2 rows x 4 tokens x 2 accumulator registers (of 32) on AVX-512, 2 x 2 x 2
# (of 16) on AVX2.
DOT_TOKENS = 4 if LANES == 16 else 2
PREFETCH_BYTES = 16384  # how far ahead of the e4m3 dot's loads each row is prefetched (into L2)
DECODE_PREFETCH_BYTES = 1024  # the same for the prefill decode, which walks many rows a K chunk at a time


# -- the decode rule ----------------------------------------------------------------------------------------


@jit
def e4m3_half_bits(code):
    """The half-precision bit pattern whose value is the e4m3 `code`'s value / 256 (scalar, Numba or Python)."""
    c = np.int32(code)
    return np.uint16(((c & 0x80) << 8) | ((c & 0x7F) << 7))


def half_to_float(bits):
    """float32 value of a half-precision bit pattern."""
    return np.float32(np.uint16(bits).view(np.float16))


def decode_e4m3(codes: np.ndarray) -> np.ndarray:
    """Vectorized numpy form of the rule: float32 e4m3 values of a uint8 array (the kernels' twins use it)."""
    c = np.asarray(codes, dtype=np.uint8).astype(np.uint16)
    bits = ((c & 0x80) << 8) | ((c & 0x7F) << 7)
    return bits.view(np.float16).astype(np.float32) * np.float32(HALF_BIAS_SHIFT)


@intrinsic
def _half_to_float(typingctx, bits):
    if not isinstance(bits, types.Integer) or bits.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@overload(half_to_float)
def _half_to_float_jit(bits):
    def impl(bits):
        return _half_to_float(np.uint16(bits))

    return impl


# -- IR helpers -----------------------------------------------------------------------------------------------

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()


def _vector(element: ir.Type, count: int) -> ir.VectorType:
    return ir.VectorType(element, count)


def _load_vector(builder, base_ptr, offset, vtype: ir.VectorType, align: int):
    ptr = builder.gep(base_ptr, [offset])
    return builder.load(builder.bitcast(ptr, vtype.as_pointer()), align=align)


def _fma(builder, a, b, c):
    fnty = ir.FunctionType(a.type, [a.type, a.type, a.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{a.type.count}f32")
    return builder.call(fn, [a, b, c])


def _prefetch_l2(builder, ptr):
    """llvm.prefetch(read, locality 2 = keep in L2 and below, data)."""
    i8p = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 2), ir.Constant(_I32, 1)])


def _e4m3_to_float(builder, raw):
    """<n x i8> e4m3 codes -> <n x float> of their values / 256: sign-extend to 16 bits, shift the seven
    exponent and mantissa bits into half position, clear the sign's second copy (bit 14), convert."""
    n = raw.type.count
    words = _vector(ir.IntType(16), n)
    bits = builder.and_(builder.shl(builder.sext(raw, words), ir.Constant(words, [7] * n)),
                        ir.Constant(words, [0xBFFF] * n))
    return builder.fpext(builder.bitcast(bits, _vector(ir.HalfType(), n)), _vector(_F32, n))


def _horizontal_sum(builder, vec):
    """Pairwise tree sum of a float vector's lanes (fixed order: deterministic)."""
    width = vec.type.count
    while width > 1:
        half = width // 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(_vector(_I32, half), list(range(half))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(_vector(_I32, half), list(range(half, width))))
        vec = builder.fadd(lo, hi)
        width = half
    return builder.extract_element(vec, ir.Constant(_I32, 0))


def _splat(builder, scalar, count: int):
    vec = builder.insert_element(ir.Constant(_vector(_F32, count), None), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_vector(_I32, count), [0] * count))


def _as_intp(context, builder, value, value_type):
    return context.cast(builder, value, value_type, types.intp)


def _is_c_array(t, dtype, ndim) -> bool:
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == ndim and t.layout == "C"


# -- e4m3 rows . float32 vector -------------------------------------------------------------------------------


def _e4m3_dot_codegen(num_rows: int, num_tokens: int):
    def codegen(context, builder, signature, args):
        codes_t, row_t, xs_t, xs_row_t, length_t, end_row_t = signature.args
        codes = context.make_array(codes_t)(context, builder, args[0])
        xs = context.make_array(xs_t)(context, builder, args[2])
        row = _as_intp(context, builder, args[1], row_t)
        xs_row = _as_intp(context, builder, args[3], xs_row_t)
        length = _as_intp(context, builder, args[4], length_t)
        width = builder.extract_value(codes.shape, 1)
        xs_width = builder.extract_value(xs.shape, 1)
        # Prefetches stop at the end of the caller's run of rows: past it lies another expert's matrix or
        # another thread's rows, and with runs of a few MB the overshoot would waste several % of the reads.
        prefetch_end = builder.sub(builder.mul(_as_intp(context, builder, args[5], end_row_t), width),
                                   ir.Constant(_I64, 64))

        # Several tokens need more accumulators: on AVX2's 16 registers they take half as wide a step.
        n = DOT_STEP if num_tokens == 1 else min(DOT_STEP, 2 * LANES)
        byte_vec = _vector(ir.IntType(8), n)
        float_vec = _vector(_F32, n)
        row_bases = [builder.mul(builder.add(row, ir.Constant(_I64, r)), width) for r in range(num_rows)]
        xs_bases = [builder.mul(builder.add(xs_row, ir.Constant(_I64, t)), xs_width) for t in range(num_tokens)]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(float_vec, None)) for _ in range(num_tokens)]
                for _ in range(num_rows)]
        zero, step = ir.Constant(_I64, 0), ir.Constant(_I64, n)
        with cgutils.for_range_slice(builder, zero, length, step, inc=True) as (k, _):
            xv = [_load_vector(builder, xs.data, builder.add(b, k), float_vec, align=4) for b in xs_bases]
            for r in range(num_rows):
                offset = builder.add(row_bases[r], k)
                w = _e4m3_to_float(builder, _load_vector(builder, codes.data, offset, byte_vec, align=1))
                for t in range(num_tokens):
                    builder.store(_fma(builder, w, xv[t], builder.load(accs[r][t])), accs[r][t])
                ahead = builder.add(offset, ir.Constant(_I64, PREFETCH_BYTES))
                ahead = builder.select(builder.icmp_signed("<", ahead, prefetch_end), ahead, prefetch_end)
                _prefetch_l2(builder, builder.gep(codes.data, [ahead]))
        sums = [_horizontal_sum(builder, builder.load(a)) for row_accs in accs for a in row_accs]
        return context.make_tuple(builder, signature.return_type, sums)

    return codegen


def _e4m3_dot_typer(num_rows: int, num_tokens: int):
    def typer(typingctx, codes, row, xs, xs_row, length, end_row):
        if not (_is_c_array(codes, types.uint8, 2) and _is_c_array(xs, types.float32, 2)):
            return None
        if not all(isinstance(t, types.Integer) for t in (row, xs_row, length, end_row)):
            return None
        ret = types.UniTuple(types.float32, num_rows * num_tokens)
        return ret(codes, row, xs, xs_row, length, end_row), _e4m3_dot_codegen(num_rows, num_tokens)

    return typer


def _e4m3_dot_twin(codes, row, xs, xs_row, length, num_rows, num_tokens):
    w = decode_e4m3(codes[row : row + num_rows, :length]).astype(np.float64) / HALF_BIAS_SHIFT
    sums = w @ xs[xs_row : xs_row + num_tokens, :length].astype(np.float64).T  # [rows, tokens]
    return tuple(np.float32(v) for v in sums.reshape(-1))


# Numba calls these through `overload`, Python runs the twins. Results are row-major: (r0 t0, r0 t1, ..., r1 t0, ...).
_e4m3_dot_1x1 = intrinsic(_e4m3_dot_typer(1, 1))
_e4m3_dot_2x1 = intrinsic(_e4m3_dot_typer(2, 1))
_e4m3_dot_2x2 = intrinsic(_e4m3_dot_typer(2, 2))
_e4m3_dot_2x3 = intrinsic(_e4m3_dot_typer(2, 3))
_e4m3_dot_2x4 = intrinsic(_e4m3_dot_typer(2, 4))


def e4m3_dot_1x1(codes, row, xs, xs_row, length, end_row):
    """(sum_k half(codes[row, k]) * xs[xs_row, k],) over k < length (a multiple of DOT_STEP), where half() is
    the e4m3 value / 256. Rows are indices, not views: nothing is built per call in the hot loop. Rows at and
    past `end_row` are not prefetched (the end of the caller's run)."""
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 1, 1)


def e4m3_dot_2x1(codes, row, xs, xs_row, length, end_row):
    """Rows `row`, `row + 1` against xs row `xs_row`: two sums sharing the loads of `xs`."""
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 1)


def e4m3_dot_2x2(codes, row, xs, xs_row, length, end_row):
    """Rows `row`, `row + 1` against xs rows `xs_row`, `xs_row + 1`: each code decoded once for both tokens."""
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 2)


def e4m3_dot_2x3(codes, row, xs, xs_row, length, end_row):
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 3)


def e4m3_dot_2x4(codes, row, xs, xs_row, length, end_row):
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 4)


@overload(e4m3_dot_1x1)
def _e4m3_dot_1x1_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_1x1(codes, row, xs, xs_row, length, end_row)


@overload(e4m3_dot_2x1)
def _e4m3_dot_2x1_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_2x1(codes, row, xs, xs_row, length, end_row)


@overload(e4m3_dot_2x2)
def _e4m3_dot_2x2_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_2x2(codes, row, xs, xs_row, length, end_row)


@overload(e4m3_dot_2x3)
def _e4m3_dot_2x3_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_2x3(codes, row, xs, xs_row, length, end_row)


@overload(e4m3_dot_2x4)
def _e4m3_dot_2x4_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_2x4(codes, row, xs, xs_row, length, end_row)


# -- prefetching a region's head ----------------------------------------------------------------------------


def _prefetch_head_codegen(context, builder, signature, args):
    codes_t, row_t, rows_t = signature.args
    codes = context.make_array(codes_t)(context, builder, args[0])
    row = _as_intp(context, builder, args[1], row_t)
    rows = _as_intp(context, builder, args[2], rows_t)
    width = builder.extract_value(codes.shape, 1)
    start = builder.mul(row, width)
    size = builder.mul(rows, width)
    limit = ir.Constant(_I64, PREFETCH_BYTES)
    end = builder.add(start, builder.select(builder.icmp_signed("<", size, limit), size, limit))
    with cgutils.for_range_slice(builder, start, end, ir.Constant(_I64, 64), inc=True) as (offset, _):
        _prefetch_l2(builder, builder.gep(codes.data, [offset]))
    return context.get_dummy_value()


@intrinsic
def _prefetch_head(typingctx, codes, row, rows):
    if not (_is_c_array(codes, types.uint8, 2) and isinstance(row, types.Integer) and isinstance(rows, types.Integer)):
        return None
    return types.void(codes, row, rows), _prefetch_head_codegen


def prefetch_head(codes, row, rows):
    """Prefetch the first PREFETCH_BYTES of rows `row:row + rows`: the dot loop prefetches that far ahead as
    it goes, so a run of rows that starts cold (a new expert, a new work item) catches up at once instead of
    waiting on memory for its first 16 KiB. (A hint: nothing to do without the JIT.)"""


@overload(prefetch_head)
def _prefetch_head_jit(codes, row, rows):
    return lambda codes, row, rows: _prefetch_head(codes, row, rows)


# -- e4m3 row segment -> scaled float32 ---------------------------------------------------------------------


def _decode_codegen(context, builder, signature, args):
    codes_t, row_t, col_t, length_t, scale_t, out_t, out_row_t, out_col_t = signature.args
    codes = context.make_array(codes_t)(context, builder, args[0])
    out = context.make_array(out_t)(context, builder, args[5])
    row, col, length, out_row, out_col = (
        _as_intp(context, builder, args[i], signature.args[i]) for i in (1, 2, 3, 6, 7))
    scale = context.cast(builder, args[4], scale_t, types.float32)
    src_base = builder.add(builder.mul(row, builder.extract_value(codes.shape, 1)), col)
    dst_base = builder.add(builder.mul(out_row, builder.extract_value(out.shape, 1)), out_col)
    float_vec = _vector(_F32, DOT_STEP)
    scales = _splat(builder, scale, DOT_STEP)
    step = ir.Constant(_I64, DOT_STEP)
    with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), length, step, inc=True) as (k, _):
        offset = builder.add(src_base, k)
        raw = _load_vector(builder, codes.data, offset, _vector(ir.IntType(8), DOT_STEP), align=1)
        w = _e4m3_to_float(builder, raw)
        dst = builder.bitcast(builder.gep(out.data, [builder.add(dst_base, k)]), float_vec.as_pointer())
        builder.store(builder.fmul(w, scales), dst, align=4)
        _prefetch_l2(builder, builder.gep(codes.data, [builder.add(offset, ir.Constant(_I64, DECODE_PREFETCH_BYTES))]))
    return context.get_dummy_value()


@intrinsic
def _e4m3_decode(typingctx, codes, row, col, length, scale, out, out_row, out_col):
    if not (_is_c_array(codes, types.uint8, 2) and _is_c_array(out, types.float32, 2)
            and isinstance(scale, types.Float)
            and all(isinstance(t, types.Integer) for t in (row, col, length, out_row, out_col))):
        return None
    return types.void(codes, row, col, length, scale, out, out_row, out_col), _decode_codegen


def e4m3_decode(codes, row, col, length, scale, out, out_row, out_col):
    """out[out_row, out_col + i] = half(codes[row, col + i]) * scale for i < length (a multiple of DOT_STEP),
    half() being the e4m3 value / 256; prefetches the row DECODE_PREFETCH_BYTES ahead."""
    decoded = decode_e4m3(codes[row, col : col + length]) / np.float32(HALF_BIAS_SHIFT)
    out[out_row, out_col : out_col + length] = decoded * np.float32(scale)


@overload(e4m3_decode)
def _e4m3_decode_jit(codes, row, col, length, scale, out, out_row, out_col):
    def impl(codes, row, col, length, scale, out, out_row, out_col):
        _e4m3_decode(codes, row, col, length, scale, out, out_row, out_col)

    return impl


# -- float32 tile micro-kernel --------------------------------------------------------------------------------


def _tile_codegen(context, builder, signature, args):
    panel_t, k0_t, tile_t, j0_t, klen_t, out_t = signature.args
    panel = context.make_array(panel_t)(context, builder, args[0])
    tile = context.make_array(tile_t)(context, builder, args[2])
    out = context.make_array(out_t)(context, builder, args[5])
    k0 = _as_intp(context, builder, args[1], k0_t)
    j0 = _as_intp(context, builder, args[3], j0_t)
    klen = _as_intp(context, builder, args[4], klen_t)
    tile_width = builder.extract_value(tile.shape, 1)
    vec = _vector(_F32, LANES)
    lanes = ir.Constant(_I64, LANES)

    rows = [builder.add(j0, ir.Constant(_I64, j)) for j in range(TILE_ROWS)]
    out_offsets = [builder.mul(r, lanes) for r in rows]
    tile_bases = [builder.mul(r, tile_width) for r in rows]
    accs = [cgutils.alloca_once_value(builder, _load_vector(builder, out.data, o, vec, align=4)) for o in out_offsets]
    with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), klen, ir.Constant(_I64, 1), inc=True) as (k, _):
        x = _load_vector(builder, panel.data, builder.mul(builder.add(k0, k), lanes), vec, align=4)
        for j in range(TILE_ROWS):
            w = builder.load(builder.gep(tile.data, [builder.add(tile_bases[j], k)]))
            builder.store(_fma(builder, _splat(builder, w, LANES), x, builder.load(accs[j])), accs[j])
    for acc, offset in zip(accs, out_offsets):
        ptr = builder.bitcast(builder.gep(out.data, [offset]), vec.as_pointer())
        builder.store(builder.load(acc), ptr, align=4)
    return context.get_dummy_value()


def _is_panel(t) -> bool:
    return _is_c_array(t, types.float32, 2)


@intrinsic
def _f32_tile(typingctx, panel, k0, tile, j0, klen, out):
    if not (_is_panel(panel) and _is_c_array(tile, types.float32, 2) and _is_panel(out)
            and all(isinstance(t, types.Integer) for t in (k0, j0, klen))):
        return None
    return types.void(panel, k0, tile, j0, klen, out), _tile_codegen


def f32_tile(panel, k0, tile, j0, klen, out):
    """out[j0 + j, :] += sum over k < klen of tile[j0 + j, k] * panel[k0 + k, :] for j < TILE_ROWS.

    `panel` is float32 [K, LANES]: LANES tokens' activations, transposed, so that the LANES tokens share each
    broadcast weight; `out` is float32 [rows, LANES], same token order."""
    w = tile[j0 : j0 + TILE_ROWS, :klen].astype(np.float64)
    out[j0 : j0 + TILE_ROWS] += (w @ panel[k0 : k0 + klen]).astype(np.float32)


@overload(f32_tile)
def _f32_tile_jit(panel, k0, tile, j0, klen, out):
    def impl(panel, k0, tile, j0, klen, out):
        _f32_tile(panel, k0, tile, j0, klen, out)

    return impl
