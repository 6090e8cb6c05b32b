"""Model configs the oracle tests run: each stresses a different part of the architecture."""

from kimi_local.model.presets import PRESETS

# Partial fp8 blocks everywhere (hidden 192, expert 96, latent 160 + rope 32), one dense layer, 16 experts top-4.
PARTIAL_BLOCKS = dict(PRESETS["tiny"])

# Group-limited routing (n_group 4, topk_group 2), no q LoRA (q_proj), no shared expert, other YaRN betas.
GROUPED = {
    **PRESETS["tiny"],
    "hidden_size": 128, "n_group": 4, "topk_group": 2, "n_routed_experts": 16, "num_experts_per_tok": 4,
    "q_lora_rank": None, "n_shared_experts": 0, "routed_scaling_factor": 2.5, "first_k_dense_replace": 1,
    "rope_scaling": {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "rope_theta": 10000.0,
}

# Several dense layers (DeepSeek-V3 has 3), 2 shared experts, more heads, rms eps different from the inner 1e-6.
DENSE_STACK = {
    **PRESETS["tiny"],
    "num_hidden_layers": 5, "first_k_dense_replace": 3, "n_shared_experts": 2, "num_attention_heads": 6,
    "hidden_size": 256, "intermediate_size": 384, "moe_intermediate_size": 64, "rms_norm_eps": 1e-5,
}

ORACLE_CONFIGS = {"partial_blocks": PARTIAL_BLOCKS, "grouped": GROUPED, "dense_stack": DENSE_STACK}
