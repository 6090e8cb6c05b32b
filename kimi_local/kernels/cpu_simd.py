"""The hand-vectorized inner loops every CPU expert kernel runs (the e4m3 decode rules are in `cpu_decode`).

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

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from kimi_local.kernels.cpu_decode import (
    AVX512, HALF_BIAS_SHIFT, TABLE_DECODE, TABLE_ORDER, TABLE_STEP, decode_e4m3, e4m3_to_float,
    e4m3_to_float_table,
)
from kimi_local.kernels.cpu_ir import (
    F32, I8, I32, I64, as_intp, fma, horizontal_sum, is_c_array, load_vector, prefetch_l2, splat, vector,
)
from kimi_local.model.fp8 import BLOCK

LANES = 16 if AVX512 else 8  # float32 lanes in one native vector register
# Micro-kernel tile: TILE_ROWS weight rows x LANES tokens, one accumulator register per row. 24 accumulators
# and two operands fit AVX-512's 32 registers, 12 fit AVX2's 16.
TILE_ROWS = 24 if LANES == 16 else 12
# Codes per row per loop step of the one-token e4m3 dot (its `length` must be a multiple): a whole cache line
# per row and step on AVX-512, so each line gets exactly one prefetch instruction.
DOT_STEP = 64 if LANES == 16 else 32
# Tokens one e4m3 dot pass serves: 2 rows x 4 tokens x 2 accumulator registers (of 32) on AVX-512, 2 x 2 x 2
# (of 16) on AVX2.
DOT_TOKENS = 4 if LANES == 16 else 2
# The one-token dots decode through the byte tables where the machine has them (`cpu_decode`): their `xs` is
# then stored in the tables' order (`one_token_order`).
ONE_TOKEN_TABLES = TABLE_DECODE and DOT_STEP == TABLE_STEP
PREFETCH_BYTES = 16384  # how far ahead of the e4m3 dot's loads each row is prefetched (into L2)
DECODE_PREFETCH_BYTES = 1024  # the same for the prefill decode, which walks many rows a K chunk at a time


STEP_ORDER = TABLE_ORDER if ONE_TOKEN_TABLES else np.arange(DOT_STEP)  # one-token xs order within a step


def one_token_order(xs: np.ndarray, length: int) -> np.ndarray:
    """A copy of `xs [..., K]` as the one-token dots read it: its first `length` columns (a DOT_STEP multiple)
    step by step, STEP_ORDER within each step (the byte tables' order where those are used, else unchanged)."""
    out = np.array(xs, copy=True)
    steps = out[..., :length].reshape(*out.shape[:-1], -1, DOT_STEP)
    out[..., :length] = steps[..., STEP_ORDER].reshape(*out.shape[:-1], length)
    return out


# -- e4m3 rows . float32 vector -------------------------------------------------------------------------------


def _e4m3_dot_codegen(num_rows: int, num_tokens: int):
    """The dot loop. One token: xs is unscaled (x * 256 in `one_token_order`) and each step's xs vector is
    multiplied by its 128-column block's scale in registers, so a run of rows needs no per-block pass over the
    activations (any such pass stops the stream of prefetches: measured 7-11% of the read rate on `down`'s short
    rows). Several tokens: xs is pre-scaled per row block by the caller (the scale multiplies would cost more
    than that pass in a loop that also does T times the FMAs)."""
    scaled = num_tokens == 1

    def codegen(context, builder, signature, args):
        codes_t, row_t, xs_t, xs_row_t, length_t, end_row_t = signature.args[:6]
        codes = context.make_array(codes_t)(context, builder, args[0])
        xs = context.make_array(xs_t)(context, builder, args[2])
        row = as_intp(context, builder, args[1], row_t)
        xs_row = as_intp(context, builder, args[3], xs_row_t)
        length = as_intp(context, builder, args[4], length_t)
        width = builder.extract_value(codes.shape, 1)
        xs_width = builder.extract_value(xs.shape, 1)
        # Prefetches stop at the end of the caller's run of rows: past it lies another expert's matrix or
        # another thread's rows, and with runs of a few MB the overshoot would waste several % of the reads.
        prefetch_end = builder.sub(builder.mul(as_intp(context, builder, args[5], end_row_t), width),
                                   ir.Constant(I64, 64))

        # Several tokens need more accumulators: on AVX2's 16 registers they take half as wide a step.
        n = DOT_STEP if num_tokens == 1 else min(DOT_STEP, 2 * LANES)
        tables = ONE_TOKEN_TABLES and num_tokens == 1
        byte_vec = vector(I8, n)
        float_vec = vector(F32, n)
        if scaled:
            scales = context.make_array(signature.args[6])(context, builder, args[6])
            block = as_intp(context, builder, args[7], signature.args[7])
            scale_base = builder.mul(block, builder.extract_value(scales.shape, 1))
        row_bases = [builder.mul(builder.add(row, ir.Constant(I64, r)), width) for r in range(num_rows)]
        xs_bases = [builder.mul(builder.add(xs_row, ir.Constant(I64, t)), xs_width) for t in range(num_tokens)]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(float_vec, None)) for _ in range(num_tokens)]
                for _ in range(num_rows)]
        zero, step = ir.Constant(I64, 0), ir.Constant(I64, n)
        with cgutils.for_range_slice(builder, zero, length, step, inc=True) as (k, _):
            xv = [load_vector(builder, xs.data, builder.add(b, k), float_vec, align=4) for b in xs_bases]
            if scaled:  # the step lies in one 128-column block (DOT_STEP divides 128)
                kb = builder.lshr(k, ir.Constant(I64, BLOCK.bit_length() - 1))
                scale = builder.load(builder.gep(scales.data, [builder.add(scale_base, kb)]))
                xv = [builder.fmul(v, splat(builder, scale, n)) for v in xv]
            for r in range(num_rows):
                offset = builder.add(row_bases[r], k)
                raw = load_vector(builder, codes.data, offset, byte_vec, align=1)
                w = e4m3_to_float_table(builder, raw) if tables else e4m3_to_float(builder, raw)
                for t in range(num_tokens):
                    builder.store(fma(builder, w, xv[t], builder.load(accs[r][t])), accs[r][t])
                ahead = builder.add(offset, ir.Constant(I64, PREFETCH_BYTES))
                ahead = builder.select(builder.icmp_signed("<", ahead, prefetch_end), ahead, prefetch_end)
                prefetch_l2(builder, builder.gep(codes.data, [ahead]))
        sums = [horizontal_sum(builder, builder.load(a)) for row_accs in accs for a in row_accs]
        return context.make_tuple(builder, signature.return_type, sums)

    return codegen


def _e4m3_dot_typer(num_rows: int, num_tokens: int):
    def check(codes, row, xs, xs_row, length, end_row) -> bool:
        return (is_c_array(codes, types.uint8, 2) and is_c_array(xs, types.float32, 2)
                and all(isinstance(t, types.Integer) for t in (row, xs_row, length, end_row)))

    ret = types.UniTuple(types.float32, num_rows * num_tokens)
    codegen = _e4m3_dot_codegen(num_rows, num_tokens)

    def typer(typingctx, codes, row, xs, xs_row, length, end_row):
        if check(codes, row, xs, xs_row, length, end_row):
            return ret(codes, row, xs, xs_row, length, end_row), codegen
        return None

    def scaled_typer(typingctx, codes, row, xs, xs_row, length, end_row, scales, block):
        if (check(codes, row, xs, xs_row, length, end_row) and is_c_array(scales, types.float32, 2)
                and isinstance(block, types.Integer)):
            return ret(codes, row, xs, xs_row, length, end_row, scales, block), codegen
        return None

    return scaled_typer if num_tokens == 1 else typer


def _e4m3_dot_twin(codes, row, xs, xs_row, length, num_rows, num_tokens, scales=None, block=0):
    w = decode_e4m3(codes[row : row + num_rows, :length]).astype(np.float64) / HALF_BIAS_SHIFT
    x = xs[xs_row : xs_row + num_tokens, :length].astype(np.float64)
    if num_tokens == 1:
        w = one_token_order(w, length)  # the values in the order the kernel pairs them with xs
        x = x * np.repeat(scales[block].astype(np.float64), BLOCK)[:length]  # a step's columns share a block
    sums = w @ x.T  # [rows, tokens]
    return tuple(np.float32(v) for v in sums.reshape(-1))


# Numba calls these through `overload`, Python runs the twins. Results are row-major: (r0 t0, r0 t1, ..., r1 t0, ...).
_e4m3_dot_1x1 = intrinsic(_e4m3_dot_typer(1, 1))
_e4m3_dot_2x1 = intrinsic(_e4m3_dot_typer(2, 1))
_e4m3_dot_2x2 = intrinsic(_e4m3_dot_typer(2, 2))
_e4m3_dot_2x3 = intrinsic(_e4m3_dot_typer(2, 3))
_e4m3_dot_2x4 = intrinsic(_e4m3_dot_typer(2, 4))


def e4m3_dot_1x1(codes, row, xs, xs_row, length, end_row, scales, block):
    """(sum_k half(codes[row, k]) * xs[xs_row, k] * scales[block, k // 128],) over k < length (a multiple of
    DOT_STEP), where half() is the e4m3 value / 256 and xs[xs_row] is in `one_token_order`. Rows are indices,
    not views: nothing is built per call in the hot loop. Rows at and past `end_row` are not prefetched (the end
    of the caller's run)."""
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 1, 1, scales, block)


def e4m3_dot_2x1(codes, row, xs, xs_row, length, end_row, scales, block):
    """Rows `row`, `row + 1` (of one 128-row block) against xs row `xs_row`: two sums sharing the loads."""
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 1, scales, block)


def e4m3_dot_2x2(codes, row, xs, xs_row, length, end_row):
    """Rows `row`, `row + 1` against xs rows `xs_row`, `xs_row + 1` (scaled by the caller, in plain order): each
    code decoded once for both tokens."""
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 2)


def e4m3_dot_2x3(codes, row, xs, xs_row, length, end_row):
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 3)


def e4m3_dot_2x4(codes, row, xs, xs_row, length, end_row):
    return _e4m3_dot_twin(codes, row, xs, xs_row, length, 2, 4)


@overload(e4m3_dot_1x1)
def _e4m3_dot_1x1_jit(codes, row, xs, xs_row, length, end_row, scales, block):
    def impl(codes, row, xs, xs_row, length, end_row, scales, block):
        return _e4m3_dot_1x1(codes, row, xs, xs_row, length, end_row, scales, block)

    return impl


@overload(e4m3_dot_2x1)
def _e4m3_dot_2x1_jit(codes, row, xs, xs_row, length, end_row, scales, block):
    def impl(codes, row, xs, xs_row, length, end_row, scales, block):
        return _e4m3_dot_2x1(codes, row, xs, xs_row, length, end_row, scales, block)

    return impl


@overload(e4m3_dot_2x2)
def _e4m3_dot_2x2_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_2x2(codes, row, xs, xs_row, length, end_row)


@overload(e4m3_dot_2x3)
def _e4m3_dot_2x3_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_2x3(codes, row, xs, xs_row, length, end_row)


@overload(e4m3_dot_2x4)
def _e4m3_dot_2x4_jit(codes, row, xs, xs_row, length, end_row):
    return lambda codes, row, xs, xs_row, length, end_row: _e4m3_dot_2x4(codes, row, xs, xs_row, length, end_row)


# -- activations for the one-token dots ---------------------------------------------------------------------


def _one_token_input_codegen(context, builder, signature, args):
    x_t, xs_t, length_t, factor_t = signature.args
    x = context.make_array(x_t)(context, builder, args[0])
    xs = context.make_array(xs_t)(context, builder, args[1])
    length = as_intp(context, builder, args[2], length_t)
    factor = splat(builder, context.cast(builder, args[3], factor_t, types.float32), DOT_STEP)
    float_vec = vector(F32, DOT_STEP)
    order = ir.Constant(vector(I32, DOT_STEP), [int(i) for i in STEP_ORDER])
    with cgutils.for_range_slice(builder, ir.Constant(I64, 0), length, ir.Constant(I64, DOT_STEP), inc=True) as (k, _):
        values = load_vector(builder, x.data, k, float_vec, align=4)
        ordered = builder.shuffle_vector(values, values, order)
        dst = builder.bitcast(builder.gep(xs.data, [k]), float_vec.as_pointer())
        builder.store(builder.fmul(ordered, factor), dst, align=4)
    return context.get_dummy_value()


@intrinsic
def _one_token_input(typingctx, x, xs, length, factor):
    if not (is_c_array(x, types.float32, 1) and is_c_array(xs, types.float32, 1)
            and isinstance(length, types.Integer) and isinstance(factor, types.Float)):
        return None
    return types.void(x, xs, length, factor), _one_token_input_codegen


def one_token_input(x, xs, length, factor):
    """xs[:length] = x[:length] * factor in `one_token_order` (length a multiple of DOT_STEP): a register shuffle
    per step, so preparing a run's activations costs about what copying them does."""
    xs[:length] = one_token_order(x[None, :length], length)[0] * np.float32(factor)


@overload(one_token_input)
def _one_token_input_jit(x, xs, length, factor):
    def impl(x, xs, length, factor):
        _one_token_input(x, xs, length, factor)

    return impl


# -- prefetching a region's head ----------------------------------------------------------------------------


def _prefetch_head_codegen(context, builder, signature, args):
    codes_t, row_t, rows_t = signature.args
    codes = context.make_array(codes_t)(context, builder, args[0])
    row = as_intp(context, builder, args[1], row_t)
    rows = as_intp(context, builder, args[2], rows_t)
    width = builder.extract_value(codes.shape, 1)
    start = builder.mul(row, width)
    size = builder.mul(rows, width)
    limit = ir.Constant(I64, PREFETCH_BYTES)
    end = builder.add(start, builder.select(builder.icmp_signed("<", size, limit), size, limit))
    with cgutils.for_range_slice(builder, start, end, ir.Constant(I64, 64), inc=True) as (offset, _):
        prefetch_l2(builder, builder.gep(codes.data, [offset]))
    return context.get_dummy_value()


@intrinsic
def _prefetch_head(typingctx, codes, row, rows):
    if not (is_c_array(codes, types.uint8, 2) and isinstance(row, types.Integer) and isinstance(rows, types.Integer)):
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
        as_intp(context, builder, args[i], signature.args[i]) for i in (1, 2, 3, 6, 7))
    scale = context.cast(builder, args[4], scale_t, types.float32)
    src_base = builder.add(builder.mul(row, builder.extract_value(codes.shape, 1)), col)
    dst_base = builder.add(builder.mul(out_row, builder.extract_value(out.shape, 1)), out_col)
    float_vec = vector(F32, DOT_STEP)
    scales = splat(builder, scale, DOT_STEP)
    step = ir.Constant(I64, DOT_STEP)
    with cgutils.for_range_slice(builder, ir.Constant(I64, 0), length, step, inc=True) as (k, _):
        offset = builder.add(src_base, k)
        raw = load_vector(builder, codes.data, offset, vector(I8, DOT_STEP), align=1)
        w = e4m3_to_float(builder, raw)
        dst = builder.bitcast(builder.gep(out.data, [builder.add(dst_base, k)]), float_vec.as_pointer())
        builder.store(builder.fmul(w, scales), dst, align=4)
        prefetch_l2(builder, builder.gep(codes.data, [builder.add(offset, ir.Constant(I64, DECODE_PREFETCH_BYTES))]))
    return context.get_dummy_value()


@intrinsic
def _e4m3_decode(typingctx, codes, row, col, length, scale, out, out_row, out_col):
    if not (is_c_array(codes, types.uint8, 2) and is_c_array(out, types.float32, 2)
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
    k0 = as_intp(context, builder, args[1], k0_t)
    j0 = as_intp(context, builder, args[3], j0_t)
    klen = as_intp(context, builder, args[4], klen_t)
    tile_width = builder.extract_value(tile.shape, 1)
    vec = vector(F32, LANES)
    lanes = ir.Constant(I64, LANES)

    rows = [builder.add(j0, ir.Constant(I64, j)) for j in range(TILE_ROWS)]
    out_offsets = [builder.mul(r, lanes) for r in rows]
    tile_bases = [builder.mul(r, tile_width) for r in rows]
    accs = [cgutils.alloca_once_value(builder, load_vector(builder, out.data, o, vec, align=4)) for o in out_offsets]
    with cgutils.for_range_slice(builder, ir.Constant(I64, 0), klen, ir.Constant(I64, 1), inc=True) as (k, _):
        x = load_vector(builder, panel.data, builder.mul(builder.add(k0, k), lanes), vec, align=4)
        for j in range(TILE_ROWS):
            w = builder.load(builder.gep(tile.data, [builder.add(tile_bases[j], k)]))
            builder.store(fma(builder, splat(builder, w, LANES), x, builder.load(accs[j])), accs[j])
    for acc, offset in zip(accs, out_offsets):
        ptr = builder.bitcast(builder.gep(out.data, [offset]), vec.as_pointer())
        builder.store(builder.load(acc), ptr, align=4)
    return context.get_dummy_value()


def _is_panel(t) -> bool:
    return is_c_array(t, types.float32, 2)


@intrinsic
def _f32_tile(typingctx, panel, k0, tile, j0, klen, out):
    if not (_is_panel(panel) and is_c_array(tile, types.float32, 2) and _is_panel(out)
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
