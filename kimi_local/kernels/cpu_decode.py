"""Decoding e4m3 codes in vector registers: the rules every CPU expert kernel uses.

**The half route (every x86-64 core with F16C).** An e4m3fn byte is `s eeee mmm` (exponent bias 7). Its sign
put at bit 15 of a 16-bit word and its other seven bits at bits 13..7, `s 0 eeee mmm 0000000`, make an IEEE
half-precision number (bias 15) with the same sign, mantissa and exponent field, so its value is exactly the e4m3
value times 2^-8, subnormals included (e4m3 subnormals, exponent 0, land on half subnormals). The hardware half
to float conversion (F16C `vcvtph2ps`, eight or sixteen lanes per instruction) then gives exact float32s, and the
2^8 goes into the block scale. Per byte that is a sign extension, a shift, a mask and a conversion, all
vectorized; no lookup table, no gather.

Why not shift straight into float32 bit positions (sign, exponent and mantissa into place, bias folded into
the scale)? It is exact too, but e4m3 subnormals then become float32 *denormals*, and on Intel cores every
multiply with a denormal operand takes a microcode assist: with random codes (1 in 16 is subnormal) that kernel
ran ten times slower here. The half route never feeds a denormal to the FMA units.

**The byte-table route (AVX-512 VBMI: Ice Lake and later Intel cores, AMD Zen 4 and later).** The half route's
conversion costs two micro-ops per 16 codes on the two vector ports that also run the FMAs, and the one-token
GEMV is bound by those ports. VBMI's two-table byte permute (`vpermi2b`) looks up 64 bytes at once in a
128-entry table held in two registers, indexed by the codes' low seven bits. Two such lookups give each code's
float32 value (the same value / 256 as the half route) as the high and low byte of its top 16 bits, every e4m3
value, subnormals included, being a normal float32 with a 3-bit mantissa; the code's sign bit is merged into the
high byte, byte unpacks pair the two bytes into 16-bit words, and a shift and a mask place each word at the top
of a 32-bit lane. 13 vector micro-ops per 64 codes against the half route's 20; the one-token GEMV streams
14% faster from L1 here. The unpacks work within 128-bit lanes, so the 64 values come out in a fixed
permutation of the codes (`TABLE_ORDER`): whatever they are dotted with is stored in that order
(`cpu_simd.one_token_order`), which costs nothing, since the kernels build a scaled copy of the activations anyway.

Codes 0x7f/0xff are NaN in e4m3fn. The checkpoint's quantizer saturates at +-448 and never writes them; both
routes read them as +-480 (what their bits mean as a half), neither checks for them.

The routes and vector widths follow the CPU features Numba compiles for (`target_features`), so that the code
asks only for instructions the compiler may use: NUMBA_CPU_FEATURES, NUMBA_ENABLE_AVX=0 and a host without
AVX-512 all get the half route on 256-bit (or narrower) vectors.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import codegen as numba_codegen
from numba.extending import intrinsic, overload

from kimi_local.kernels.cpu_ir import F32, I8, I16, I32, call_intrinsic, concat, vector
from kimi_local.kernels.cpu_jit import jit

HALF_BIAS_SHIFT = 256.0  # e4m3 value = decoded value * 2^8 (both routes)


def target_features() -> frozenset[str]:
    """The CPU features Numba compiles for, as Numba's JIT picks them: NUMBA_CPU_FEATURES if set, else the
    host's (without the AVX family if NUMBA_ENABLE_AVX=0). NUMBA_CPU_NAME alone changes the CPU model, not
    these; a portable build names both (say `haswell` and an empty feature list: that model's own)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = numba_codegen.get_host_cpu_features()
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


_FEATURES = target_features()
AVX512 = "avx512f" in _FEATURES
TABLE_DECODE = AVX512 and "avx512vbmi" in _FEATURES


# -- the rules in scalar and numpy form (the references and the kernels' plain-Python twins) ------------------


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


# -- the half route in registers ----------------------------------------------------------------------------


def e4m3_to_float(builder, raw):
    """<n x i8> e4m3 codes -> <n x float> of their values / 256, in order: sign-extend to 16 bits, shift the
    seven exponent and mantissa bits into half position, clear the sign's second copy (bit 14), convert."""
    n = raw.type.count
    words = vector(I16, n)
    bits = builder.and_(builder.shl(builder.sext(raw, words), ir.Constant(words, [7] * n)),
                        ir.Constant(words, [0xBFFF] * n))
    return builder.fpext(builder.bitcast(bits, vector(ir.HalfType(), n)), vector(F32, n))


# -- the byte-table route -------------------------------------------------------------------------------------

TABLE_STEP = 64  # codes per lookup: one 512-bit register of bytes

# Value q of a decoded step comes from code TABLE_ORDER[q]: the word unpacks take codes 0..7 (first) and 8..15
# (second) of each 16-byte lane, and each word's even and odd halves become separate float vectors.
TABLE_ORDER = np.array([16 * lane + 8 * (v // 2) + 2 * j + v % 2
                        for v in range(4) for lane in range(4) for j in range(4)], np.int64)


def _top_bytes() -> tuple[np.ndarray, np.ndarray]:
    """Bytes 2 and 3 of the float32 value / 256 of each e4m3 magnitude 0..127 (the other two bytes are 0)."""
    values = decode_e4m3(np.arange(128, dtype=np.uint8)) / np.float32(HALF_BIAS_SHIFT)
    bits = values.astype(np.float32).view(np.uint32)
    assert not (bits & 0xFFFF).any()  # 3-bit mantissas: the value lies in the top 16 bits
    return ((bits >> 16) & 0xFF).astype(np.uint8), (bits >> 24).astype(np.uint8)


_LOW_TABLE, _HIGH_TABLE = _top_bytes()


def e4m3_to_float_table(builder, raw):
    """<64 x i8> e4m3 codes -> <64 x float> of their values / 256, value q from code TABLE_ORDER[q]."""
    bytes64 = vector(I8, TABLE_STEP)

    def lookup(table):
        first, second = (ir.Constant(bytes64, [int(b) for b in half]) for half in (table[:64], table[64:]))
        return call_intrinsic(builder, "llvm.x86.avx512.vpermi2var.qi.512", bytes64, [first, raw, second])

    low = lookup(_LOW_TABLE)
    # The tables hold magnitudes (their bytes' bit 7 is 0): the code's sign is merged into the high byte.
    high = builder.or_(lookup(_HIGH_TABLE), builder.and_(raw, ir.Constant(bytes64, [0x80] * 64)))
    dwords, floats = vector(I32, 16), vector(F32, 16)
    parts = []
    for half in (0, 1):  # words of codes 0..7, then 8..15, of each 16-byte lane: [low byte, high byte] pairs
        pairs = [i for lane in range(4) for c in range(8)
                 for i in (16 * lane + 8 * half + c, 64 + 16 * lane + 8 * half + c)]
        words = builder.bitcast(builder.shuffle_vector(low, high, ir.Constant(vector(I32, 64), pairs)), dwords)
        parts.append(builder.bitcast(builder.shl(words, ir.Constant(dwords, [16] * 16)), floats))  # even words
        parts.append(builder.bitcast(builder.and_(words, ir.Constant(dwords, [-65536] * 16)), floats))  # odd
    return concat(builder, parts)
