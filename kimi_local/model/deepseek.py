"""The DeepSeek-V3 / Kimi-K2 transformer on torch, device-agnostic.

Block: h = x + MLA(RMSNorm(x)); out = h + FFN(RMSNorm(h)), FFN dense for the first `first_k_dense_replace`
layers and MoE after. MLA has two paths over one compressed cache that stores, per token and layer, the
normalized 512-dim latent c and the rotated 64-dim shared rope key (KIMI_FACTS section 3):

- prefill (naive): a chunk of one sequence attends to all cached positions; per group of heads the cached latents
  are expanded through kv_b_proj into k_nope / v, so memory is bounded by the chunk and the head group, never by
  the full T x T score matrix;
- decode (absorbed): one new token per running sequence; q_nope is folded through W_UK into latent space, scores
  and context are computed against the latents directly, and W_UV maps the context back.

Routed experts go through the `RoutedExperts` backend (model.experts); the model only routes. After each layer's
attention the next MoE layer's router is applied to the current hidden state to predict its experts, and the
prediction is handed to the backend as a prefetch hint.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.config import ModelConfig
from kimi_local.model.experts import RoutedExperts
from kimi_local.model.fp8 import dequantize
from kimi_local.model.placement import Placement
from kimi_local.model.rope import RotaryEmbedding

INNER_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm use the default eps in HF, whatever the config says
ATTN_SCRATCH_BYTES = 256 << 20  # bound on the score + expanded-KV scratch of one prefill head group

RoutingHook = Callable[[int, torch.Tensor, "torch.Tensor | None"], None]  # (layer, chosen ids, predicted ids)


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Linear(nn.Module):
    """A GPU/CPU-resident linear layer holding its weight dequantized to the compute dtype."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


LinearFactory = Callable[[Checkpoint, str, torch.dtype, torch.device], nn.Module]


def dequantized_linear(ckpt: Checkpoint, prefix: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    codes, scales = ckpt.fp8_weight(prefix)
    return Linear(torch.from_numpy(dequantize(codes, scales)).to(device=device, dtype=dtype))


def fp8_linear(ckpt: Checkpoint, prefix: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Keeps the checkpoint's fp8 codes and scales (1 byte per weight) and computes with the block-fp8 kernels."""
    from kimi_local.kernels.fp8_linear import Fp8Linear

    codes, scales = ckpt.fp8_weight(prefix)
    return Fp8Linear(torch.from_numpy(codes.copy()).to(device), torch.from_numpy(scales.copy()).to(device))


def cpu_fp8_linear(ckpt: Checkpoint, prefix: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Keeps the checkpoint's fp8 codes and scales in RAM (1 byte per weight, a quarter of float32) and computes
    with the CPU's Numba block-fp8 kernels (GEMV for decode, decode-once GEMM for prefill), in x's dtype."""
    from kimi_local.kernels.cpu_linear import CpuFp8Linear

    return CpuFp8Linear(*ckpt.fp8_weight(prefix))


def linear_for(device: torch.device) -> LinearFactory:
    """Resident linears stay block-fp8 on every device: the Triton kernels on CUDA, the Numba kernels on the
    CPU (faster there than float32 weights for decode, which reads every resident weight once per token)."""
    return fp8_linear if device.type == "cuda" else cpu_fp8_linear


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The dense layers and the shared expert."""

    def __init__(self, gate: nn.Module, up: nn.Module, down: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """noaux_tc sigmoid routing, computed in fp32 (as HF does). The correction bias only selects."""

    def __init__(self, config: ModelConfig, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(weight.float(), requires_grad=False)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        scores = F.linear(x.float(), self.weight).sigmoid()  # [N, E]
        choice = scores + self.bias
        if c.n_group > 1:
            grouped = choice.view(-1, c.n_group, c.n_routed_experts // c.n_group)
            group_scores = grouped.topk(2, dim=-1)[0].sum(-1)  # [N, G]
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(c.topk_group, dim=-1)[1], True)
            choice = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(-1, c.n_routed_experts)
        ids = choice.topk(c.num_experts_per_tok, dim=-1)[1]  # [N, k]
        weights = scores.gather(1, ids)
        if c.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * c.routed_scaling_factor


class MoE(nn.Module):
    def __init__(self, layer_idx: int, router: Router, shared: MLP | None, experts: RoutedExperts,
                 executor: ThreadPoolExecutor | None):
        super().__init__()
        self.layer_idx = layer_idx
        self.router = router
        self.shared = shared
        self.experts = experts
        self.executor = executor

    def forward(self, x: torch.Tensor, hook: RoutingHook | None = None,
                predicted: torch.Tensor | None = None) -> torch.Tensor:
        ids, weights = self.router(x)
        if hook is not None:
            hook(self.layer_idx, ids, predicted)
        if self.shared is None:
            return self.experts(self.layer_idx, x, ids, weights)
        if self.executor is None:
            return self.experts(self.layer_idx, x, ids, weights) + self.shared(x)
        # Routed experts (CPU kernels / expert store) run while torch computes the shared expert.
        routed = self.executor.submit(self.experts, self.layer_idx, x, ids, weights)
        shared = self.shared(x)
        return routed.result() + shared


@dataclass
class KVCache:
    """Compressed MLA cache: per layer, slot and position the normalized latent and the rotated rope key.
    Each layer's part lives on that layer's device."""

    kv: list[torch.Tensor]  # per layer [slots, max_len, kv_lora_rank]
    pe: list[torch.Tensor]  # per layer [slots, max_len, qk_rope_head_dim]

    @classmethod
    def allocate(cls, config: ModelConfig, num_slots: int, max_len: int, dtype: torch.dtype,
                 device: "torch.device | str | tuple[torch.device, ...]") -> "KVCache":
        devices = device if isinstance(device, tuple) else (torch.device(device),) * config.num_hidden_layers
        shape = (num_slots, max_len)
        # zeros, not empty: rows past a sequence's length are masked, and 0 * garbage could be NaN
        return cls([torch.zeros(*shape, config.kv_lora_rank, dtype=dtype, device=d) for d in devices],
                   [torch.zeros(*shape, config.qk_rope_head_dim, dtype=dtype, device=d) for d in devices])

    @property
    def num_slots(self) -> int:
        return self.kv[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.kv[0].shape[1]

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return config.num_hidden_layers * (config.kv_lora_rank + config.qk_rope_head_dim) * elem


class MLA(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, modules: dict[str, nn.Module], kv_b_weight: torch.Tensor,
                 rope: RotaryEmbedding):
        super().__init__()
        c = config
        self.config = c
        self.layer_idx = layer_idx
        self.q_proj = modules.get("q_proj")
        self.q_a_proj = modules.get("q_a_proj")
        self.q_a_layernorm = modules.get("q_a_layernorm")
        self.q_b_proj = modules.get("q_b_proj")
        self.kv_a_proj_with_mqa = modules["kv_a_proj_with_mqa"]
        self.kv_a_layernorm = modules["kv_a_layernorm"]
        self.o_proj = modules["o_proj"]
        # kv_b_proj rows: head h owns [h*(dn+dv), h*(dn+dv)+dn) for k_nope, then dv rows for v.
        self.kv_b = nn.Parameter(
            kv_b_weight.view(c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank),
            requires_grad=False,
        )
        self.rope = rope
        self.scale = c.softmax_scale
        self.latent_attention = latent_attention_kernel(c, kv_b_weight.device)

    def _project(self, x: torch.Tensor, positions: torch.Tensor):
        c = self.config
        n = x.shape[0]
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(n, c.num_attention_heads, c.qk_head_dim)
        q_nope, q_pe = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)
        cos, sin = self.rope.cos_sin(positions)
        return q_nope, self.rope.apply(q_pe, cos, sin), latent, self.rope.apply(k_pe, cos, sin)

    def prefill(self, x: torch.Tensor, slot: int, start: int, cache: KVCache) -> torch.Tensor:
        """One chunk of one sequence at positions start..start+N-1."""
        c = self.config
        n = x.shape[0]
        positions = torch.arange(start, start + n, device=x.device)
        q_nope, q_pe, latent, k_pe = self._project(x, positions)
        kv_cache, pe_cache = cache.kv[self.layer_idx][slot], cache.pe[self.layer_idx][slot]
        kv_cache[start : start + n] = latent
        pe_cache[start : start + n] = k_pe
        length = start + n
        ctx_latent, ctx_pe = kv_cache[:length], pe_cache[:length]  # [L, r], [L, dr]
        mask = positions[:, None] < torch.arange(length, device=x.device)[None, :]  # [N, L] future keys
        heads = c.num_attention_heads
        dn, dv = c.qk_nope_head_dim, c.v_head_dim
        per_head = 4 * (n * length + length * (dn + dv))
        group = max(1, min(heads, ATTN_SCRATCH_BYTES // max(per_head, 1)))
        out = torch.empty(n, heads, dv, dtype=x.dtype, device=x.device)
        for h0 in range(0, heads, group):
            h1 = min(heads, h0 + group)
            kv = torch.einsum("lc,hdc->lhd", ctx_latent, self.kv_b[h0:h1])  # [L, g, dn+dv]
            k_nope, v = kv.split([dn, dv], dim=-1)
            scores = torch.einsum("nhd,lhd->hnl", q_nope[:, h0:h1], k_nope)  # [g, N, L]
            scores = scores + torch.einsum("nhd,ld->hnl", q_pe[:, h0:h1], ctx_pe)
            scores = (scores * self.scale).masked_fill(mask, float("-inf"))
            probs = scores.float().softmax(-1).to(x.dtype)
            out[:, h0:h1] = torch.einsum("hnl,lhd->nhd", probs, v)
        return self.o_proj(out.reshape(n, heads * dv))

    def decode(self, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token for each of B sequences (slots[b] at positions[b]), absorbed form."""
        c = self.config
        b = x.shape[0]
        q_nope, q_pe, latent, k_pe = self._project(x, positions)
        kv_all, pe_all = cache.kv[self.layer_idx], cache.pe[self.layer_idx]
        kv_all[slots, positions] = latent
        pe_all[slots, positions] = k_pe
        w_uk = self.kv_b[:, : c.qk_nope_head_dim]  # [H, dn, r]
        w_uv = self.kv_b[:, c.qk_nope_head_dim :]  # [H, dv, r]
        q_latent = torch.einsum("bhd,hdc->bhc", q_nope, w_uk)
        if self.latent_attention is not None:
            context = slot_attention(self.latent_attention, q_latent, q_pe, positions, slots, kv_all, pe_all,
                                     self.scale)
        else:
            length = int(positions.max()) + 1
            if b == 1:
                kv, pe = kv_all[slots[0], :length][None], pe_all[slots[0], :length][None]
            else:
                kv, pe = kv_all[slots, :length], pe_all[slots, :length]  # [B, L, r], [B, L, dr]
            scores = torch.einsum("bhc,btc->bht", q_latent, kv) + torch.einsum("bhr,btr->bht", q_pe, pe)
            future = torch.arange(length, device=x.device)[None, :] > positions[:, None]  # [B, L]
            scores = (scores * self.scale).masked_fill(future[:, None, :], float("-inf"))
            probs = scores.float().softmax(-1).to(x.dtype)
            context = torch.einsum("bht,btc->bhc", probs, kv)
        out = torch.einsum("bhc,hdc->bhd", context, w_uv)
        return self.o_proj(out.reshape(b, c.num_attention_heads * c.v_head_dim))


LatentAttention = Callable[..., torch.Tensor]  # (q_latent, q_pe, kv [S,T,r], pe [S,T,dr], scale, lengths [S])


def slot_attention(kernel: LatentAttention, q_latent: torch.Tensor, q_pe: torch.Tensor, positions: torch.Tensor,
                   slots: torch.Tensor, kv_all: torch.Tensor, pe_all: torch.Tensor, scale: float) -> torch.Tensor:
    """Absorbed attention over the whole slot-major cache: queries are scattered into a [slots, H, .] batch (idle
    slots attend to one row and are dropped), so the cache is read in place, with no gather copy, no host sync
    and shapes that depend only on the cache."""
    num_slots = kv_all.shape[0]
    q_full = q_latent.new_zeros(num_slots, *q_latent.shape[1:])
    pe_full = q_pe.new_zeros(num_slots, *q_pe.shape[1:])
    q_full[slots] = q_latent
    pe_full[slots] = q_pe
    lengths = torch.ones(num_slots, dtype=torch.int32, device=kv_all.device)
    lengths[slots] = (positions + 1).to(torch.int32)
    return kernel(q_full, pe_full, kv_all, pe_all, scale, lengths)[slots]


def latent_attention_kernel(config: ModelConfig, device: torch.device) -> LatentAttention | None:
    """The Triton flash-decoding kernel on CUDA when the latent widths suit it (powers of two, as Kimi-K2's
    512 and 64 are); None means the torch path."""
    dims = (config.kv_lora_rank, config.qk_rope_head_dim)
    if device.type != "cuda" or any(d < 16 or d & (d - 1) for d in dims):
        return None
    from kimi_local.kernels.triton_mla import mla_decode

    return mla_decode


class Block(nn.Module):
    def __init__(self, layer_idx: int, input_norm: RMSNorm, attn: MLA, post_norm: RMSNorm, ffn: nn.Module,
                 device: torch.device):
        super().__init__()
        self.layer_idx = layer_idx
        self.device = device
        self.input_layernorm = input_norm
        self.self_attn = attn
        self.post_attention_layernorm = post_norm
        self.mlp = ffn


@dataclass(frozen=True)
class Batch:
    """What one forward step computes: a prefill chunk of one sequence, or one decode token per sequence."""

    input_ids: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    slots: torch.Tensor  # [N]: decode: each token's slot; prefill: the one slot repeated
    is_prefill: bool


class KimiModel(nn.Module):
    def __init__(self, config: ModelConfig, embed: torch.Tensor, layers: list[Block], norm: RMSNorm,
                 lm_head: torch.Tensor, experts: RoutedExperts, placement: Placement):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Parameter(embed, requires_grad=False)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = nn.Parameter(lm_head, requires_grad=False)
        self.experts = experts
        self.placement = placement
        self.dtype = placement.dtype
        self.device = placement.embed_device  # where a step's input ids go
        self.prefetch_enabled = True
        self.cuda_graphs = True  # decode steps replay per-layer CUDA graphs when layers sit on CUDA (decode_runner)
        self.routing_hooks: list[RoutingHook] = []

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, experts: RoutedExperts, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", placement: Placement | None = None,
                        linear: LinearFactory | None = None, overlap_experts: bool = True,
                        progress: Callable[[int], None] | None = None) -> "KimiModel":
        """Builds the resident part of the model from `ckpt` (routed experts stay with `experts`), on one device
        or as `placement` says. Linear layers: block-fp8 kernels on CUDA and on the CPU (`linear_for`), unless
        `linear` overrides the choice."""
        c = ckpt.config
        placement = placement or Placement.uniform(c.num_hidden_layers, device, dtype)
        dtype = placement.dtype  # a given placement carries the compute dtype; the KV cache is allocated in it
        ropes: dict[torch.device, RotaryEmbedding] = {}
        executor = ThreadPoolExecutor(1, thread_name_prefix="kimi-experts") if overlap_experts else None

        layers = []
        for i, dev in enumerate(placement.layer_devices):
            make = linear or linear_for(dev)
            rope = ropes.setdefault(dev, RotaryEmbedding(c, dev))
            p = f"model.layers.{i}"
            a = f"{p}.self_attn"

            def norm(name: str, eps: float) -> RMSNorm:
                return RMSNorm(ckpt.tensor(name, dtype, dev), eps)

            def mlp(prefix: str) -> MLP:
                return MLP(*(make(ckpt, f"{prefix}.{proj}", dtype, dev) for proj in ("gate_proj", "up_proj", "down_proj")))

            mods: dict[str, nn.Module] = {
                "kv_a_proj_with_mqa": make(ckpt, f"{a}.kv_a_proj_with_mqa", dtype, dev),
                "kv_a_layernorm": norm(f"{a}.kv_a_layernorm.weight", INNER_NORM_EPS),
                "o_proj": make(ckpt, f"{a}.o_proj", dtype, dev),
            }
            if c.q_lora_rank is None:
                mods["q_proj"] = make(ckpt, f"{a}.q_proj", dtype, dev)
            else:
                mods["q_a_proj"] = make(ckpt, f"{a}.q_a_proj", dtype, dev)
                mods["q_a_layernorm"] = norm(f"{a}.q_a_layernorm.weight", INNER_NORM_EPS)
                mods["q_b_proj"] = make(ckpt, f"{a}.q_b_proj", dtype, dev)
            kv_b = torch.from_numpy(dequantize(*ckpt.fp8_weight(f"{a}.kv_b_proj"))).to(device=dev, dtype=dtype)
            attn = MLA(c, i, mods, kv_b, rope)
            if c.is_moe_layer(i):
                router = Router(c, ckpt.tensor(f"{p}.mlp.gate.weight", torch.float32, dev),
                                ckpt.tensor(f"{p}.mlp.gate.e_score_correction_bias", torch.float32, dev))
                shared = mlp(f"{p}.mlp.shared_experts") if c.n_shared_experts else None
                ffn: nn.Module = MoE(i, router, shared, experts, executor)
            else:
                ffn = mlp(f"{p}.mlp")
            layers.append(Block(i, norm(f"{p}.input_layernorm.weight", c.rms_norm_eps), attn,
                                norm(f"{p}.post_attention_layernorm.weight", c.rms_norm_eps), ffn, dev))
            if progress:
                progress(i + 1)
        embed = ckpt.tensor("model.embed_tokens.weight", dtype, placement.embed_device)
        head_name = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        lm_head = ckpt.tensor(head_name, dtype, placement.head_device)
        final_norm = RMSNorm(ckpt.tensor("model.norm.weight", dtype, placement.head_device), c.rms_norm_eps)
        return cls(c, embed, layers, final_norm, lm_head, experts, placement)

    # -- forward -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: Batch, cache: KVCache, logits_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Runs one step; returns float32 logits for `logits_rows` (default: every token) [R, vocab]."""
        h = F.embedding(batch.input_ids, self.embed_tokens)
        if batch.is_prefill:
            slot, start = int(batch.slots[0]), int(batch.positions[0])
        positions, slots = batch.positions, batch.slots
        hook = self._dispatch_hook if self.routing_hooks else None
        num_layers = len(self.layers)
        predicted = None  # this layer's experts as guessed after the previous layer's attention
        for i, layer in enumerate(self.layers):
            if h.device != layer.device:
                h = h.to(layer.device)
                positions, slots = positions.to(layer.device), slots.to(layer.device)
            x = layer.input_layernorm(h)
            if batch.is_prefill:
                h = h + layer.self_attn.prefill(x, slot, start, cache)
            else:
                h = h + layer.self_attn.decode(x, positions, slots, cache)
            x = layer.post_attention_layernorm(h)
            next_predicted = self._predict(i, h) if i + 1 < num_layers else None
            if isinstance(layer.mlp, MoE):
                h = h + layer.mlp(x, hook, predicted)
            else:
                h = h + layer.mlp(x)
            predicted = next_predicted
        if logits_rows is not None:
            h = h[logits_rows.to(h.device)]
        h = h.to(self.lm_head.device)
        return F.linear(self.norm(h), self.lm_head).float()

    def _predict(self, layer_idx: int, h: torch.Tensor) -> torch.Tensor | None:
        """Guess the next MoE layer's experts from the hidden state after this layer's attention."""
        if not self.prefetch_enabled:
            return None
        nxt = self.layers[layer_idx + 1]
        if not isinstance(nxt.mlp, MoE):
            return None
        ids, _ = nxt.mlp.router(nxt.post_attention_layernorm(h.to(nxt.device)))
        self.experts.prefetch(layer_idx + 1, ids)
        return ids

    def _dispatch_hook(self, layer_idx: int, ids: torch.Tensor, predicted: torch.Tensor | None) -> None:
        for hook in self.routing_hooks:
            hook(layer_idx, ids, predicted)

    def decode_runner(self, cache: KVCache):
        """What the engine decodes with over `cache`: a `DecodeRunner` (each layer's GPU part between two expert
        calls replayed as a CUDA graph) when `cuda_graphs` is on and a layer sits on CUDA; None: `forward`."""
        if not self.cuda_graphs or all(d.type != "cuda" for d in self.placement.layer_devices):
            return None
        from kimi_local.model.decode_graphs import DecodeRunner

        return DecodeRunner(self, cache, capture=True)

    def kv_bytes_per_token(self) -> int:
        return KVCache.bytes_per_token(self.config, self.dtype)


def param_counts(config: ModelConfig) -> dict[str, int]:
    """Parameter counts by tier (scales excluded): routed experts vs everything that stays resident."""
    from kimi_local.model.layout import checkpoint_tensors, is_ignored

    routed = resident = 0
    for spec in checkpoint_tensors(config):
        if spec.name.endswith("weight_scale_inv") or is_ignored(spec.name):
            continue
        n = math.prod(spec.shape)
        if ".mlp.experts." in spec.name:
            routed += n
        else:
            resident += n
    return {"routed_experts": routed, "resident": resident, "total": routed + resident}

