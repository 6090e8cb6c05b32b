"""Built-in model configs for synthetic checkpoints.

- `tiny`: seconds to write and run; shapes that are not multiples of 128 (partial fp8 blocks everywhere).
- `demo`: the built-in demo model behind `kimi-local chat` when no model is configured (random weights).
- `k2-slice`: real Kimi-K2 layer shapes (hidden 7168, expert 2048, 64 heads, MLA ranks 1536/512) with few layers
  and experts, for benchmarks.
Each starts from Kimi-K2's own config.json values and overrides sizes only.
"""

from __future__ import annotations

from typing import Any

KIMI_K2_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "kimi_k2",
    "vocab_size": 163840,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 64,
    "num_key_value_heads": 64,
    "n_routed_experts": 384,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 1,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "routed_scaling_factor": 2.827,
    "norm_topk_prob": True,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "rope_theta": 50000.0,
    "rope_scaling": {
        "type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096, "beta_fast": 1.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
    },
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-06,
    "bos_token_id": 163584,
    "eos_token_id": 163585,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "num_nextn_predict_layers": 0,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "quantization_config": {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128],
    },
}


def _with(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    config = {**KIMI_K2_CONFIG, **overrides, "vocab_size": vocab_size}
    # Kimi's special tokens sit right after the base ranks: [BOS] = num_base, [EOS] = num_base + 1.
    config["bos_token_id"] = vocab_size - 256
    config["eos_token_id"] = vocab_size - 255
    return config


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _with(
        1024, hidden_size=192, intermediate_size=320, moe_intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, num_experts_per_tok=4,
        q_lora_rank=96, kv_lora_rank=160, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=48,
    ),
    "demo": _with(
        8192, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=8, n_routed_experts=64, num_experts_per_tok=8,
        q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
    ),
    "k2-slice": _with(8192, num_hidden_layers=4, n_routed_experts=64),
}

# Shard counts: several shards even for tiny checkpoints, so the index is always exercised.
PRESET_SHARDS = {"tiny": 3, "demo": 2}
