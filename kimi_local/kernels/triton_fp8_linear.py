"""Block-fp8 weight-only linear layers on the GPU, in Triton.

    y[M, N] = x[M, K] @ W^T,   W[n, k] = e4m3(Wq[n, k]) * S[n // 128, k // 128]

The weight stays in GPU memory in its 1-byte checkpoint form (`Wq [N, K]`, the native out x in layout, and the
float32 ceil grid `S`); it is dequantized tile by tile in registers, activations are bf16/f16/f32 and the
accumulation is float32. Three ideas keep it cheap:

* Scales per tile, not per element. A K tile is at most 128 wide and aligned (BLOCK_K divides 128), so it lies
  inside one scale column: the kernel accumulates the dot product of the raw codes for the tile and multiplies
  by the per-row scale once, as DeepSeek's `fp8_gemm` kernel does with its block scales.
* e4m3 decoded with integer ops. Putting the 7 magnitude bits of a code at bit 7 of an fp16 and the sign at
  bit 15 gives exactly e4m3 / 256: the 4-bit exponent lands in fp16's 5-bit field, whose bias (15) is 8 more
  than e4m3's (7), and e4m3 subnormals become fp16 subnormals. The 256 is folded into the scale. This needs no
  fp8 hardware (Triton's fp8e4nv type needs sm_89+; Ampere workstation cards lack it) and behaves the same in
  the interpreter. The decoded value is exact in fp16, bf16 and fp32. (The NaN codes 0x7f/0xff, which no
  checkpoint holds, come out as +-480 instead of NaN.)
* Two launch shapes. Decode (M <= DECODE_MAX_M) is a GEMV: a program owns BLOCK_N weight rows and a slice of
  the K tiles (split-K, so that even N = 576 fills the GPU), reads each weight byte once for all M rows, and
  reduces with broadcast multiply + sum; split-K partials are summed by torch. Prefill is a tiled GEMM with
  `tl.dot` (bf16/f16 tensor cores for bf16/f16 activations, exact fp32 for fp32 ones).

Under `TRITON_INTERPRET=1` (CPU tensors) the kernels compute in fp32 throughout, because the interpreter's bf16
arithmetic is wrong; the set-up must export the variable before this module is imported (`@triton.jit` decides
at decoration time). `fp8_linear_reference` is the rule in torch, for tests and as the CPU fallback.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kimi_local.kernels.fp8_checks import check_activation, check_fp8_weight
from kimi_local.model.fp8 import BLOCK, dequantize_torch

DECODE_MAX_M = 4  # up to this many rows the weight-streaming GEMV beats the tl.dot GEMM


@triton.jit
def decode_e4m3(codes):
    """uint8 e4m3 codes -> float32 value / 256 (see the module docstring)."""
    b = codes.to(tl.uint16)
    bits = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr,
    M, N, K, stride_xm, num_scale_cols, tiles_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K  # [BLOCK_N, 1] row starts
    s_rows = s_ptr + (offs_n // 128) * num_scale_cols  # [BLOCK_N] scale-row starts
    x_rows = x_ptr + offs_m[:, None] * stride_xm  # [BLOCK_M, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = pid_k * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(K, BLOCK_K))
    for t in range(first, last):
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        codes = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
        w = decode_e4m3(codes)  # [BLOCK_N, BLOCK_K]
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        part = tl.sum(x[:, None, :] * w[None, :, :], axis=2)  # [BLOCK_M, BLOCK_N]
        scale = tl.load(s_rows + (t * BLOCK_K) // 128, mask=n_mask, other=0.0) * 256.0
        acc += part * scale[None, :]
    out = out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _fp8_gemm_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr,
    M, N, K, stride_xm, num_scale_cols,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1]
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    s_rows = s_ptr + (offs_n // 128) * num_scale_cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        codes = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
        w = decode_e4m3(codes).to(DOT_DTYPE)  # exact in bf16/f16/f32
        part = tl.dot(x.to(DOT_DTYPE), tl.trans(w), input_precision="ieee")  # [BLOCK_M, BLOCK_N] f32
        scale = tl.load(s_rows + (t * BLOCK_K) // 128, mask=n_mask, other=0.0) * 256.0
        acc += part * scale[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def is_interpreted() -> bool:
    """True when the kernels were built for the Triton interpreter (CPU tensors) rather than compiled."""
    return not isinstance(_fp8_gemm_kernel, triton.runtime.JITFunction)


def check_device(name: str, tensor: torch.Tensor, device: torch.device) -> None:
    """The tensors of one launch must share a device, CUDA unless the kernels run in the interpreter."""
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}, expected {device} like the other inputs")
    if device.type != "cuda" and not is_interpreted():
        raise RuntimeError(
            f"{name} is on {device}: the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 exported before importing triton, for CPU tests)"
        )


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def pick_split_k(num_n_tiles: int, num_k_tiles: int, device: torch.device) -> int:
    """Split K until there are about four programs per SM; every split gets the same number of tiles."""
    wanted = max(1, min(num_k_tiles, -(-4 * num_sms(device) // num_n_tiles)))
    tiles_per_split = -(-num_k_tiles // wanted)
    return -(-num_k_tiles // tiles_per_split)


def dot_dtype(x_dtype: torch.dtype):
    if is_interpreted() or x_dtype == torch.float32:
        return tl.float32
    return tl.bfloat16 if x_dtype == torch.bfloat16 else tl.float16


def fp8_linear(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    scales: torch.Tensor,
    *,
    variant: str | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    split_k: int | None = None,
) -> torch.Tensor:
    """`x [..., K] @ dequant(weight_q [N, K], scales)^T -> [..., N]` in x's dtype.

    `variant` is "gemv" (decode) or "gemm" (prefill); by default the GEMV serves up to DECODE_MAX_M rows.
    `block_n`, `block_k` (a divisor of 128) and `split_k` (GEMV only) override the tile choice, for tests and
    benchmarks."""
    codes = check_fp8_weight("weight", weight_q, scales)
    if codes.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(codes.shape)}")
    num_out, num_in = codes.shape
    check_activation("x", x, num_in)
    check_device("x", x, codes.device)
    check_device("scales", scales, codes.device)
    if block_k is not None and (block_k <= 0 or BLOCK % block_k or block_k & (block_k - 1)):
        raise ValueError(f"block_k must be a power of two dividing {BLOCK}, got {block_k}")
    if block_n is not None and (block_n <= 0 or block_n & (block_n - 1)):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    lead_shape = x.shape[:-1]
    x2 = x.reshape(-1, num_in)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    num_rows = x2.shape[0]
    out = torch.empty((num_rows, num_out), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out.reshape(*lead_shape, num_out)
    if variant is None:
        variant = "gemv" if num_rows <= DECODE_MAX_M else "gemm"
    if variant == "gemv":
        _launch_gemv(x2, codes, scales, out, block_n, block_k, split_k)
    elif variant == "gemm":
        if split_k not in (None, 1):
            raise ValueError("split_k applies to the gemv variant only")
        _launch_gemm(x2, codes, scales, out, block_n, block_k)
    else:
        raise ValueError(f"variant must be 'gemv' or 'gemm', got {variant!r}")
    return out.reshape(*lead_shape, num_out)


def _launch_gemv(x, codes, scales, out, block_n, block_k, split_k):
    num_rows, num_in = x.shape
    num_out = codes.shape[0]
    block_m = triton.next_power_of_2(num_rows)
    if block_m > 16:
        raise ValueError(f"the gemv variant takes at most 16 rows, got {num_rows}")
    block_k = block_k or 128
    block_n = block_n or max(8, 64 // block_m)  # keeps BLOCK_M * BLOCK_N * BLOCK_K at 8192 products
    num_n_tiles = triton.cdiv(num_out, block_n)
    num_k_tiles = triton.cdiv(num_in, block_k)
    if split_k is None:
        split_k = pick_split_k(num_n_tiles, num_k_tiles, x.device)
    if not 1 <= split_k <= num_k_tiles:
        raise ValueError(f"split_k must be in [1, {num_k_tiles}] for K = {num_in}, BLOCK_K = {block_k}; got {split_k}")
    tiles_per_split = triton.cdiv(num_k_tiles, split_k)
    split_k = triton.cdiv(num_k_tiles, tiles_per_split)  # no empty splits
    target = out if split_k == 1 else torch.empty((split_k, num_rows, num_out), dtype=torch.float32, device=x.device)
    _fp8_gemv_kernel[(num_n_tiles, split_k)](
        x, codes, scales, target,
        num_rows, num_out, num_in, x.stride(0), scales.shape[1], tiles_per_split,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )
    if split_k > 1:
        out.copy_(target.sum(0))


def _launch_gemm(x, codes, scales, out, block_n, block_k):
    num_rows, num_in = x.shape
    num_out = codes.shape[0]
    block_m = 16 if num_rows <= 16 else 32 if num_rows <= 32 else 64
    block_n = block_n or 128
    block_k = block_k or 64
    if block_n < 16 or block_k < 16:
        raise ValueError(f"the gemm variant needs block_n and block_k >= 16 (tl.dot), got {block_n}, {block_k}")
    grid = (triton.cdiv(num_rows, block_m), triton.cdiv(num_out, block_n))
    _fp8_gemm_kernel[grid](
        x, codes, scales, out,
        num_rows, num_out, num_in, x.stride(0), scales.shape[1],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_DTYPE=dot_dtype(x.dtype),
        num_warps=4, num_stages=3,
    )


def fp8_linear_reference(x: torch.Tensor, weight_q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The rule in torch: dequantize to float32, matmul in float32, cast to x's dtype. Any device."""
    w = dequantize_torch(weight_q, scales, torch.float32).to(x.device)
    return (x.float() @ w.T).to(x.dtype)
