"""Absorbed MLA decode attention over the latent KV cache, in Triton (flash-decoding).

In the absorbed form (KIMI_FACTS §3) the cache holds, per token, the normalized latent `c` (512) and the rotated
shared rope key `k_pe` (64); nothing is per head. With `q~_h = q_nope_h . W_UK_h` folded in by the caller,

    score[b, h, t] = (q~[b, h] . kv[b, t] + q_pe[b, h] . pe[b, t]) * softmax_scale
    ctx[b, h]      = sum_t softmax_t(score[b, h, :]) * kv[b, t]                  (512, then . W_UV_h^T outside)

for t < lengths[b]. Every head reads the same cache rows (one shared key, like MQA), so a program takes a block
of BLOCK_H heads and streams each cache tile once for all of them: both products are `tl.dot`s. The sequence is
split over programs (flash-decoding) so that one sequence still fills the GPU; each split keeps a running max
and sum (online softmax) and writes its partial context and log-sum-exp, and torch merges the splits. The grid
depends only on the cache's capacity, never on the lengths' values, so a decode step can be graph-captured.

The cache tensors may be views with a row stride (a preallocated `[B, T_max, 576]` buffer sliced into its
latent and rope parts); the last dim must be contiguous. Scores, softmax and accumulation are float32; on a
GPU bf16/f16 inputs feed the dots as they are (the probabilities are cast to the cache dtype for the second
dot, as flash attention does); in the interpreter everything is float32.
`mla_decode_reference` is the same formula in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kimi_local.kernels.triton_fp8_linear import check_device, dot_dtype, num_sms

BLOCK_H = 16  # heads per program (tl.dot needs at least 16 rows)
BLOCK_T = 32  # cache rows per tile


@triton.jit
def _mla_decode_kernel(
    q_ptr, q_pe_ptr, kv_ptr, pe_ptr, lengths_ptr, o_ptr, lse_ptr,
    num_heads, num_splits, tiles_per_split, softmax_scale,
    stride_qb, stride_qh, stride_qpb, stride_qph, stride_kvb, stride_kvt, stride_peb, stride_pet,
    D_LATENT: tl.constexpr, D_ROPE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    b = tl.program_id(0)
    pid_h = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(lengths_ptr + b)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < num_heads
    offs_c = tl.arange(0, D_LATENT)
    offs_r = tl.arange(0, D_ROPE)
    q = tl.load(q_ptr + b * stride_qb + offs_h[:, None] * stride_qh + offs_c[None, :], mask=h_mask[:, None], other=0.0)
    q_pe = tl.load(q_pe_ptr + b * stride_qpb + offs_h[:, None] * stride_qph + offs_r[None, :],
                   mask=h_mask[:, None], other=0.0)
    q = q.to(DOT_DTYPE)  # [BLOCK_H, D_LATENT]
    q_pe = q_pe.to(DOT_DTYPE)  # [BLOCK_H, D_ROPE]
    kv_base = kv_ptr + b.to(tl.int64) * stride_kvb
    pe_base = pe_ptr + b.to(tl.int64) * stride_peb
    m_i = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, D_LATENT), dtype=tl.float32)
    start = split * tiles_per_split * BLOCK_T
    end = tl.minimum(start + tiles_per_split * BLOCK_T, length)
    for t0 in range(start, end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_mask = offs_t < end
        kv = tl.load(kv_base + offs_t[:, None] * stride_kvt + offs_c[None, :], mask=t_mask[:, None], other=0.0)
        pe = tl.load(pe_base + offs_t[:, None] * stride_pet + offs_r[None, :], mask=t_mask[:, None], other=0.0)
        kv = kv.to(DOT_DTYPE)  # [BLOCK_T, D_LATENT]
        scores = tl.dot(q, tl.trans(kv), input_precision="ieee")
        scores += tl.dot(q_pe, tl.trans(pe.to(DOT_DTYPE)), input_precision="ieee")
        scores = tl.where(t_mask[None, :], scores * softmax_scale, float("-inf"))  # [BLOCK_H, BLOCK_T]
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), kv, input_precision="ieee")
        m_i = m_new
    has_rows = l_i > 0  # a split past the sequence's end contributes nothing (lse = -inf)
    out = acc / tl.where(has_rows, l_i, 1.0)[:, None]
    lse = tl.where(has_rows, m_i + tl.log(tl.where(has_rows, l_i, 1.0)), float("-inf"))
    row = (b * num_heads + offs_h) * num_splits + split  # [BLOCK_H] rows of the [B, H, S] partials
    tl.store(o_ptr + row.to(tl.int64)[:, None] * D_LATENT + offs_c[None, :], out, mask=h_mask[:, None])
    tl.store(lse_ptr + row, lse, mask=h_mask)


def check_mla_inputs(q_latent, q_pe, kv_cache, pe_cache, lengths) -> None:
    if q_latent.dim() != 3 or q_pe.dim() != 3 or q_pe.shape[:2] != q_latent.shape[:2]:
        raise ValueError(f"q_latent [B, H, C] and q_pe [B, H, R] disagree: {tuple(q_latent.shape)}, {tuple(q_pe.shape)}")
    batch, _, latent = q_latent.shape
    rope = q_pe.shape[2]
    if kv_cache.dim() != 3 or tuple(kv_cache.shape[::2]) != (batch, latent):
        raise ValueError(f"kv_cache must be [B={batch}, T, {latent}], got {tuple(kv_cache.shape)}")
    if pe_cache.dim() != 3 or tuple(pe_cache.shape) != (batch, kv_cache.shape[1], rope):
        raise ValueError(f"pe_cache must be [{batch}, {kv_cache.shape[1]}, {rope}], got {tuple(pe_cache.shape)}")
    for name, dim in (("latent", latent), ("rope", rope)):
        if dim < 16 or dim & (dim - 1):
            raise ValueError(f"the {name} width must be a power of two >= 16, got {dim}")
    dtypes = {q_latent.dtype, q_pe.dtype, kv_cache.dtype, pe_cache.dtype}
    if len(dtypes) != 1 or q_latent.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"queries and caches must share one of bfloat16/float16/float32, got {sorted(map(str, dtypes))}")
    for name, t in (("q_latent", q_latent), ("q_pe", q_pe), ("kv_cache", kv_cache), ("pe_cache", pe_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim")
    if lengths is None:
        return
    if lengths.shape != (batch,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lengths must be an int32/int64 tensor of shape ({batch},), got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    if lengths.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > kv_cache.shape[1]):
        raise ValueError(f"lengths must lie in [1, {kv_cache.shape[1]}] (the cache's rows)")


def mla_decode(
    q_latent: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    pe_cache: torch.Tensor,
    softmax_scale: float,
    lengths: torch.Tensor | None = None,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """ctx `[B, H, C]` in the queries' dtype, attending to rows `t < lengths[b]` (all `T` rows by default).

    q_latent `[B, H, C]`, q_pe `[B, H, R]`, kv_cache `[B, T, C]`, pe_cache `[B, T, R]`."""
    check_mla_inputs(q_latent, q_pe, kv_cache, pe_cache, lengths)
    device = q_latent.device
    for name, t in (("q_pe", q_pe), ("kv_cache", kv_cache), ("pe_cache", pe_cache)) + (
            (("lengths", lengths),) if lengths is not None else ()):
        check_device(name, t, device)
    batch, num_heads, latent = q_latent.shape
    capacity = kv_cache.shape[1]
    if batch == 0 or num_heads == 0:
        return torch.zeros_like(q_latent)
    if capacity == 0:
        raise ValueError("the cache has no rows to attend to")
    if lengths is None:
        lengths = torch.full((batch,), capacity, dtype=torch.int32, device=device)
    num_tiles = triton.cdiv(capacity, BLOCK_T)
    head_blocks = triton.cdiv(num_heads, BLOCK_H)
    if num_splits is None:
        num_splits = min(num_tiles, max(1, triton.cdiv(2 * num_sms(device), batch * head_blocks)))
    if not 1 <= num_splits <= num_tiles:
        raise ValueError(f"num_splits must be in [1, {num_tiles}] for a cache of {capacity} rows, got {num_splits}")
    tiles_per_split = triton.cdiv(num_tiles, num_splits)
    num_splits = triton.cdiv(num_tiles, tiles_per_split)
    partial = torch.empty((batch, num_heads, num_splits, latent), dtype=torch.float32, device=device)
    lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=device)
    _mla_decode_kernel[(batch, head_blocks, num_splits)](
        q_latent, q_pe, kv_cache, pe_cache, lengths, partial, lse,
        num_heads, num_splits, tiles_per_split, float(softmax_scale),
        q_latent.stride(0), q_latent.stride(1), q_pe.stride(0), q_pe.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), pe_cache.stride(0), pe_cache.stride(1),
        D_LATENT=latent, D_ROPE=q_pe.shape[2], BLOCK_H=BLOCK_H, BLOCK_T=BLOCK_T,
        DOT_DTYPE=dot_dtype(q_latent.dtype), num_warps=4, num_stages=2,
    )
    if num_splits == 1:
        return partial[:, :, 0].to(q_latent.dtype)
    weight = torch.exp(lse - lse.amax(-1, keepdim=True))  # [B, H, S]; empty splits weigh 0
    ctx = (weight.unsqueeze(-1) * partial).sum(2) / weight.sum(-1, keepdim=True)
    return ctx.to(q_latent.dtype)


def mla_decode_reference(q_latent, q_pe, kv_cache, pe_cache, softmax_scale, lengths=None) -> torch.Tensor:
    """The formula in float32 torch, any device."""
    scores = torch.einsum("bhc,btc->bht", q_latent.float(), kv_cache.float())
    scores = (scores + torch.einsum("bhr,btr->bht", q_pe.float(), pe_cache.float())) * softmax_scale
    if lengths is not None:
        beyond = torch.arange(kv_cache.shape[1], device=scores.device)[None, :] >= lengths.to(scores.device)[:, None]
        scores = scores.masked_fill(beyond[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bht,btc->bhc", probs, kv_cache.float()).to(q_latent.dtype)
