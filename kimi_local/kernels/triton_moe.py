"""The fused routed-expert FFN for the experts resident on the GPU, in Triton.

A MoE layer's routed work is a set of (token, slot k) pairs, pair id `p = t * top_k + k`, each sending token t
to expert `topk_ids[t, k]` with weight `topk_weights[t, k]`. Some of those experts live in the GPU tier: a
stack of block-fp8 weights `[num_slots, N, K]` plus `slot_of_expert` (expert id -> tier slot, -1 when the
expert is not on the GPU). This module computes, for the pairs whose expert has a slot,

    out[t] = sum_k  w[t, k] * down( silu(gate x_t) * up x_t )      (the other pairs are the CPU's)

in three steps, the layout of vLLM's fused_moe:

1. Align (torch, on the device): sort the pairs by slot and pad each slot's run to a multiple of BLOCK_M, so
   that every block of BLOCK_M sorted pairs belongs to one expert. Padding holds the sentinel `num_pairs`.
   No step reads a value back to the host: the grid is sized by an upper bound on the block count and the
   blocks past the real count return at once, so a decode step can be captured in a CUDA graph.
2. Gate/up kernel: a program takes one block and BLOCK_N intermediate columns, gathers its tokens' rows of x,
   streams the expert's gate and up tiles once for all of them (the weights are read once per block, not per
   token) and writes `h = silu(g) * u` at row p of an intermediate buffer.
3. Down kernel: the same shape over `h`, scaled by the pair's routing weight, written at row p of a zeroed
   `[num_pairs, H]` float32 buffer; summing over k gives out. Pairs off the GPU stay zero.

The fp8 tiles are decoded and scaled as in `triton_fp8_linear` (one scale per row per K tile, integer e4m3
decode). `fused_moe_reference` is the same computation with dequantized torch matmuls, one expert at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from kimi_local.kernels.fp8_checks import check_activation, check_fp8_weight
from kimi_local.kernels.triton_fp8_linear import check_device, decode_e4m3, dot_dtype
from kimi_local.model.experts import ExpertWeights
from kimi_local.model.fp8 import dequantize_torch, scale_grid_shape


@dataclass(frozen=True)
class StackedExperts:
    """The GPU tier's expert weights, one slot per resident expert, in native block-fp8."""

    gate_q: torch.Tensor  # uint8 [S, I, H]
    gate_s: torch.Tensor  # float32 [S, ceil(I/128), ceil(H/128)]
    up_q: torch.Tensor  # uint8 [S, I, H]
    up_s: torch.Tensor
    down_q: torch.Tensor  # uint8 [S, H, I]
    down_s: torch.Tensor  # float32 [S, ceil(H/128), ceil(I/128)]

    @classmethod
    def empty(cls, num_slots: int, hidden_size: int, intermediate_size: int, device="cpu") -> "StackedExperts":
        def codes(n, k):
            return torch.zeros((num_slots, n, k), dtype=torch.uint8, device=device)

        def scales(n, k):
            return torch.zeros((num_slots, *scale_grid_shape(n, k)), dtype=torch.float32, device=device)

        h, i = hidden_size, intermediate_size
        return cls(codes(i, h), scales(i, h), codes(i, h), scales(i, h), codes(h, i), scales(h, i))

    @property
    def num_slots(self) -> int:
        return self.gate_q.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.gate_q.shape[2]

    @property
    def intermediate_size(self) -> int:
        return self.gate_q.shape[1]

    def load_slot(self, slot: int, weights: ExpertWeights) -> None:
        """Copy one expert (numpy views from the expert source) into `slot`."""
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} out of range for a tier of {self.num_slots} slots")
        pairs = [(self.gate_q, weights.gate_q), (self.gate_s, weights.gate_s), (self.up_q, weights.up_q),
                 (self.up_s, weights.up_s), (self.down_q, weights.down_q), (self.down_s, weights.down_s)]
        for name, (dst, src) in zip(("gate_q", "gate_s", "up_q", "up_s", "down_q", "down_s"), pairs):
            if tuple(src.shape) != tuple(dst.shape[1:]):
                raise ValueError(f"expert {name} has shape {tuple(src.shape)}, the tier holds {tuple(dst.shape[1:])}")
            dst[slot].copy_(torch.from_numpy(np.ascontiguousarray(src)).view(dst.dtype))

    def validate(self) -> "StackedExperts":
        """Check shapes, dtypes, grids and devices; return a copy whose codes are viewed as uint8."""
        gate_q = check_fp8_weight("gate", self.gate_q, self.gate_s)
        up_q = check_fp8_weight("up", self.up_q, self.up_s)
        down_q = check_fp8_weight("down", self.down_q, self.down_s)
        if gate_q.dim() != 3:
            raise ValueError(f"gate codes must be [num_slots, I, H], got {tuple(gate_q.shape)}")
        num_slots, inter, hidden = gate_q.shape
        if tuple(up_q.shape) != (num_slots, inter, hidden):
            raise ValueError(f"up codes {tuple(up_q.shape)} must match gate codes {tuple(gate_q.shape)}")
        if tuple(down_q.shape) != (num_slots, hidden, inter):
            raise ValueError(f"down codes {tuple(down_q.shape)} must be {(num_slots, hidden, inter)}")
        for name, t in (("up", up_q), ("down", down_q)):
            if t.device != gate_q.device:
                raise ValueError(f"{name} codes are on {t.device}, gate codes on {gate_q.device}")
        return StackedExperts(gate_q, self.gate_s, up_q, self.up_s, down_q, self.down_s)


@dataclass(frozen=True)
class PairBlocks:
    """Pairs sorted by slot, padded per slot to whole blocks of `block_m`."""

    sorted_pairs: torch.Tensor  # int32 [max_blocks * block_m]; pair ids, padding = num_pairs
    block_slots: torch.Tensor  # int32 [max_blocks]; the slot of each block (meaningful below num_blocks)
    num_blocks: torch.Tensor  # int32 [1]; how many blocks are real, kept on the device
    block_m: int

    @property
    def max_blocks(self) -> int:
        return self.block_slots.shape[0]


def align_pairs(topk_ids: torch.Tensor, slot_of_expert: torch.Tensor, num_slots: int, block_m: int) -> PairBlocks:
    """Group the (token, k) pairs by GPU slot without a host sync (see step 1 of the module docstring)."""
    device = topk_ids.device
    flat = topk_ids.reshape(-1).long()
    num_pairs = flat.numel()
    slots = slot_of_expert.long()[flat]  # -1: expert not on the GPU
    key = torch.where(slots >= 0, slots, num_slots)  # off-GPU pairs sort last
    counts = torch.zeros(num_slots + 1, dtype=torch.long, device=device).scatter_add_(0, key, torch.ones_like(key))
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    rank = torch.arange(num_pairs, device=device) - (torch.cumsum(counts, 0) - counts)[sorted_key]
    blocks_per_slot = (counts[:num_slots] + block_m - 1) // block_m
    block_end = torch.cumsum(blocks_per_slot, 0)
    max_blocks = num_pairs // block_m + min(num_slots, num_pairs)  # sum ceil(c/B) <= sum floor(c/B) + #nonzero
    dump = max_blocks * block_m  # where off-GPU pairs are scattered, then cut off
    first_row = (block_end - blocks_per_slot) * block_m
    dest = torch.where(sorted_key < num_slots, first_row[sorted_key.clamp(max=num_slots - 1)] + rank, dump)
    sorted_pairs = torch.full((dump + 1,), num_pairs, dtype=torch.int32, device=device)
    sorted_pairs.scatter_(0, dest, order.to(torch.int32))
    block_ids = torch.arange(max_blocks, device=device)
    block_slots = torch.searchsorted(block_end, block_ids, right=True).to(torch.int32)
    return PairBlocks(sorted_pairs[:dump], block_slots, block_end[-1:].to(torch.int32), block_m)


@triton.jit
def _moe_gate_up_kernel(
    x_ptr, gate_ptr, gate_s_ptr, up_ptr, up_s_ptr, h_ptr,
    sorted_pairs_ptr, block_slots_ptr, num_blocks_ptr,
    num_pairs, top_k, I, H, stride_xm, num_scale_rows, num_scale_cols,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_b >= tl.load(num_blocks_ptr):
        return
    slot = tl.load(block_slots_ptr + pid_b).to(tl.int64)
    pairs = tl.load(sorted_pairs_ptr + pid_b * BLOCK_M + tl.arange(0, BLOCK_M))
    m_mask = pairs < num_pairs
    x_rows = x_ptr + (pairs // top_k).to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1] gathered tokens
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < I
    w_rows = slot * I * H + offs_n.to(tl.int64)[:, None] * H  # [BLOCK_N, 1] offsets into gate and up
    s_rows = slot * num_scale_rows * num_scale_cols + (offs_n // 128) * num_scale_cols
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, tl.cdiv(H, BLOCK_K)):
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < H
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0).to(DOT_DTYPE)
        w_mask = n_mask[:, None] & k_mask[None, :]
        s_col = (t * BLOCK_K) // 128
        g = decode_e4m3(tl.load(gate_ptr + w_rows + offs_k[None, :], mask=w_mask, other=0)).to(DOT_DTYPE)
        g_scale = tl.load(gate_s_ptr + s_rows + s_col, mask=n_mask, other=0.0) * 256.0
        acc_gate += tl.dot(x, tl.trans(g), input_precision="ieee") * g_scale[None, :]
        u = decode_e4m3(tl.load(up_ptr + w_rows + offs_k[None, :], mask=w_mask, other=0)).to(DOT_DTYPE)
        u_scale = tl.load(up_s_ptr + s_rows + s_col, mask=n_mask, other=0.0) * 256.0
        acc_up += tl.dot(x, tl.trans(u), input_precision="ieee") * u_scale[None, :]
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up
    out = h_ptr + pairs.to(tl.int64)[:, None] * I + offs_n[None, :]
    tl.store(out, h.to(h_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _moe_down_kernel(
    h_ptr, down_ptr, down_s_ptr, weights_ptr, y_ptr,
    sorted_pairs_ptr, block_slots_ptr, num_blocks_ptr,
    num_pairs, I, H, num_scale_rows, num_scale_cols,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_b >= tl.load(num_blocks_ptr):
        return
    slot = tl.load(block_slots_ptr + pid_b).to(tl.int64)
    pairs = tl.load(sorted_pairs_ptr + pid_b * BLOCK_M + tl.arange(0, BLOCK_M))
    m_mask = pairs < num_pairs
    h_rows = h_ptr + pairs.to(tl.int64)[:, None] * I  # [BLOCK_M, 1]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < H
    w_rows = down_ptr + slot * H * I + offs_n.to(tl.int64)[:, None] * I  # [BLOCK_N, 1]
    s_rows = down_s_ptr + slot * num_scale_rows * num_scale_cols + (offs_n // 128) * num_scale_cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, tl.cdiv(I, BLOCK_K)):
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < I
        h = tl.load(h_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0).to(DOT_DTYPE)
        w = decode_e4m3(tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0))
        scale = tl.load(s_rows + (t * BLOCK_K) // 128, mask=n_mask, other=0.0) * 256.0
        acc += tl.dot(h, tl.trans(w.to(DOT_DTYPE)), input_precision="ieee") * scale[None, :]
    routing = tl.load(weights_ptr + pairs, mask=m_mask, other=0.0)  # [BLOCK_M] float32
    out = y_ptr + pairs.to(tl.int64)[:, None] * H + offs_n[None, :]
    tl.store(out, acc * routing[:, None], mask=m_mask[:, None] & n_mask[None, :])


def check_routing(x, topk_ids, topk_weights, slot_of_expert, num_slots) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [T, H], got shape {tuple(x.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids must be [T, k] with T = {x.shape[0]}, got shape {tuple(topk_ids.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape) or not topk_weights.is_floating_point():
        raise ValueError(f"topk_weights must be floating point with shape {tuple(topk_ids.shape)}, "
                         f"got {topk_weights.dtype} {tuple(topk_weights.shape)}")
    if slot_of_expert.dim() != 1 or slot_of_expert.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slot_of_expert must be a 1-D int32/int64 tensor, got {slot_of_expert.dtype} "
                         f"{tuple(slot_of_expert.shape)}")
    if slot_of_expert.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return  # value checks would sync; a captured graph replays inputs that were checked when recorded
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= slot_of_expert.numel()):
        raise ValueError(f"topk_ids must lie in [0, {slot_of_expert.numel()}) (the slot_of_expert table)")
    if slot_of_expert.numel() and (int(slot_of_expert.min()) < -1 or int(slot_of_expert.max()) >= num_slots):
        raise ValueError(f"slot_of_expert values must be -1 (not on the GPU) or a slot in [0, {num_slots})")


def fused_moe(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    experts: StackedExperts,
    slot_of_expert: torch.Tensor,
    *,
    block_m: int | None = None,
) -> torch.Tensor:
    """Sum over k of w * expert(x) for the pairs whose expert has a GPU slot; `[T, H]` in x's dtype."""
    experts = experts.validate()
    hidden, inter, num_slots = experts.hidden_size, experts.intermediate_size, experts.num_slots
    check_activation("x", x, hidden)
    check_routing(x, topk_ids, topk_weights, slot_of_expert, num_slots)
    device = experts.gate_q.device
    for name, t in (("x", x), ("topk_ids", topk_ids), ("topk_weights", topk_weights),
                    ("slot_of_expert", slot_of_expert)):
        check_device(name, t, device)
    num_tokens, top_k = topk_ids.shape
    num_pairs = num_tokens * top_k
    if num_pairs == 0 or num_slots == 0:
        return torch.zeros_like(x)
    if block_m is None:
        per_slot = num_pairs / num_slots
        block_m = 16 if per_slot <= 16 else 32 if per_slot <= 32 else 64
    if block_m not in (16, 32, 64, 128):
        raise ValueError(f"block_m must be 16, 32, 64 or 128, got {block_m}")
    blocks = align_pairs(topk_ids, slot_of_expert, num_slots, block_m)
    x = x if x.stride(-1) == 1 else x.contiguous()
    compute = dot_dtype(x.dtype)
    h = torch.empty((num_pairs, inter), dtype=hidden_dtype(x.dtype), device=device)
    y = torch.zeros((num_pairs, hidden), dtype=torch.float32, device=device)
    common = dict(BLOCK_M=block_m, BLOCK_K=64, DOT_DTYPE=compute, num_warps=4, num_stages=3)
    _moe_gate_up_kernel[(blocks.max_blocks, triton.cdiv(inter, 64))](
        x, experts.gate_q, experts.gate_s, experts.up_q, experts.up_s, h,
        blocks.sorted_pairs, blocks.block_slots, blocks.num_blocks,
        num_pairs, top_k, inter, hidden, x.stride(0), experts.gate_s.shape[1], experts.gate_s.shape[2],
        BLOCK_N=64, **common,
    )
    _moe_down_kernel[(blocks.max_blocks, triton.cdiv(hidden, 128))](
        h, experts.down_q, experts.down_s, topk_weights.float().contiguous(), y,
        blocks.sorted_pairs, blocks.block_slots, blocks.num_blocks,
        num_pairs, inter, hidden, experts.down_s.shape[1], experts.down_s.shape[2],
        BLOCK_N=128, **common,
    )
    return y.view(num_tokens, top_k, hidden).sum(1).to(x.dtype)


def hidden_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """The dtype `fused_moe` stores the SwiGLU output in between its two GEMMs: the activation dtype where the
    down GEMM runs on bf16/f16 tensor cores, float32 where it computes in float32 (fp32 inputs, the interpreter)."""
    return torch.float32 if dot_dtype(x_dtype) == tl.float32 else x_dtype


def fused_moe_reference(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    experts: StackedExperts,
    slot_of_expert: torch.Tensor,
    round_hidden_to: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One expert at a time: dequantize, run SwiGLU in float32, add the weighted rows back. Any device.
    `round_hidden_to` rounds the SwiGLU output as the kernel stores it (pass `hidden_dtype(x.dtype)` to mirror it)."""
    xf = x.float()
    out = torch.zeros_like(xf)
    slots = slot_of_expert.long().to(topk_ids.device)[topk_ids.long()]  # [T, k]
    for slot in torch.unique(slots[slots >= 0]).tolist():
        rows, cols = torch.nonzero(slots == slot, as_tuple=True)
        gate = dequantize_torch(experts.gate_q[slot], experts.gate_s[slot]).to(x.device)
        up = dequantize_torch(experts.up_q[slot], experts.up_s[slot]).to(x.device)
        down = dequantize_torch(experts.down_q[slot], experts.down_s[slot]).to(x.device)
        h = xf[rows]
        y = (torch.nn.functional.silu(h @ gate.T) * (h @ up.T)).to(round_hidden_to).float() @ down.T
        out.index_add_(0, rows, y * topk_weights[rows, cols].float().unsqueeze(1))
    return out.to(x.dtype)
