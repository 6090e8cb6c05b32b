"""The checkpoint's tensor inventory: every tensor a DeepSeek-V3/Kimi-K2 checkpoint holds, with its dtype and
shape, derived from the config alone. The writer, the reader and `verify` all use this one list.

Dtypes are safetensors names: F8_E4M3 (linear weights), F32 (their `weight_scale_inv` grids and the router
bias), BF16 (embeddings, norms, router weight, lm_head and the ignored `rotary_emb.inv_freq` buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

from kimi_local.model.config import ModelConfig
from kimi_local.model.fp8 import scale_grid_shape

EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * DTYPE_SIZES[self.dtype]


DTYPE_SIZES = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "I64": 8, "U8": 1}


def is_ignored(name: str) -> bool:
    """Buffers stored in the checkpoint that are not weights."""
    return name.endswith("rotary_emb.inv_freq")


def expert_prefix(layer_idx: int, expert_id: int) -> str:
    return f"model.layers.{layer_idx}.mlp.experts.{expert_id}"


def expert_tensor_names(layer_idx: int, expert_id: int) -> tuple[str, ...]:
    """The six tensors of one routed expert, in `ExpertWeights` field order."""
    p = expert_prefix(layer_idx, expert_id)
    out: list[str] = []
    for proj in EXPERT_PROJS:
        out += [f"{p}.{proj}.weight", f"{p}.{proj}.weight_scale_inv"]
    return tuple(out)


def _fp8_linear(name: str, out_features: int, in_features: int) -> list[TensorSpec]:
    return [
        TensorSpec(f"{name}.weight", "F8_E4M3", (out_features, in_features)),
        TensorSpec(f"{name}.weight_scale_inv", "F32", scale_grid_shape(out_features, in_features)),
    ]


def _mlp(prefix: str, hidden: int, inter: int) -> list[TensorSpec]:
    return (
        _fp8_linear(f"{prefix}.gate_proj", inter, hidden)
        + _fp8_linear(f"{prefix}.up_proj", inter, hidden)
        + _fp8_linear(f"{prefix}.down_proj", hidden, inter)
    )


def layer_tensors(config: ModelConfig, layer_idx: int, include_experts: bool = True) -> list[TensorSpec]:
    c = config
    h = c.hidden_size
    p = f"model.layers.{layer_idx}"
    a = f"{p}.self_attn"
    specs = [TensorSpec(f"{p}.input_layernorm.weight", "BF16", (h,))]
    if c.q_lora_rank is None:
        specs += _fp8_linear(f"{a}.q_proj", c.num_attention_heads * c.qk_head_dim, h)
    else:
        specs += _fp8_linear(f"{a}.q_a_proj", c.q_lora_rank, h)
        specs.append(TensorSpec(f"{a}.q_a_layernorm.weight", "BF16", (c.q_lora_rank,)))
        specs += _fp8_linear(f"{a}.q_b_proj", c.num_attention_heads * c.qk_head_dim, c.q_lora_rank)
    specs += _fp8_linear(f"{a}.kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, h)
    specs.append(TensorSpec(f"{a}.kv_a_layernorm.weight", "BF16", (c.kv_lora_rank,)))
    specs += _fp8_linear(
        f"{a}.kv_b_proj", c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank
    )
    specs += _fp8_linear(f"{a}.o_proj", h, c.num_attention_heads * c.v_head_dim)
    # Kimi-K2 ships these non-weight buffers (shape [56] bf16 as dumped); readers skip them.
    specs.append(TensorSpec(f"{a}.rotary_emb.inv_freq", "BF16", (56,)))
    specs.append(TensorSpec(f"{p}.post_attention_layernorm.weight", "BF16", (h,)))
    if not c.is_moe_layer(layer_idx):
        specs += _mlp(f"{p}.mlp", h, c.intermediate_size)
        return specs
    specs.append(TensorSpec(f"{p}.mlp.gate.weight", "BF16", (c.n_routed_experts, h)))
    specs.append(TensorSpec(f"{p}.mlp.gate.e_score_correction_bias", "F32", (c.n_routed_experts,)))
    if include_experts:
        for e in range(c.n_routed_experts):
            specs += _mlp(expert_prefix(layer_idx, e), h, c.moe_intermediate_size)
    if c.n_shared_experts:
        specs += _mlp(f"{p}.mlp.shared_experts", h, c.moe_intermediate_size * c.n_shared_experts)
    return specs


def checkpoint_tensors(config: ModelConfig) -> list[TensorSpec]:
    """All tensors in checkpoint order: embeddings, layers 0.., final norm, lm_head."""
    specs = [TensorSpec("model.embed_tokens.weight", "BF16", (config.vocab_size, config.hidden_size))]
    for layer_idx in range(config.num_hidden_layers):
        specs += layer_tensors(config, layer_idx)
    specs.append(TensorSpec("model.norm.weight", "BF16", (config.hidden_size,)))
    if not config.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", "BF16", (config.vocab_size, config.hidden_size)))
    return specs
