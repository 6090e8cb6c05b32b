"""`ModelConfig`: the model's frozen configuration, read from a checkpoint's config.json (HF key names).

Accepts `model_type` "kimi_k2" and "deepseek_v3" (Kimi-K2 is DeepSeek-V3 with other sizes). Values this engine
does not implement are rejected with an error naming the field, never silently ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("kimi_k2", "deepseek_v3")


class ConfigError(ValueError):
    """A config.json value this engine cannot run."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    n_routed_experts: int
    num_experts_per_tok: int
    kv_lora_rank: int
    q_lora_rank: int | None
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    model_type: str = "deepseek_v3"
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    quantization_config: dict | None = None
    num_nextn_predict_layers: int = 0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    # -- derived sizes -------------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def block_size(self) -> tuple[int, int]:
        return tuple(self.quantization_config["weight_block_size"])  # type: ignore[index,return-value]

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    @property
    def moe_layer_ids(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_moe_layer(i)]

    @property
    def softmax_scale(self) -> float:
        """(d_nope + d_rope)^-0.5, times mscale^2 under YaRN (always applied, as HF does)."""
        scale = self.qk_head_dim**-0.5
        rs = self.rope_scaling or {}
        factor = float(rs.get("factor", 1.0))
        if rs and factor > 1.0:
            m = 0.1 * float(rs.get("mscale_all_dim", 0.0) or 0.0) * math.log(factor) + 1.0
            scale *= m * m
        return scale

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        known = {f.name for f in fields(cls)} - {"extra"}
        required = [
            "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "n_routed_experts", "num_experts_per_tok", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
        ]
        for name in required:
            if name not in raw:
                raise ConfigError(f"{source}: missing required field '{name}'")
        values = {k: v for k, v in raw.items() if k in known}
        values.setdefault("q_lora_rank", raw.get("q_lora_rank"))
        extra = {k: v for k, v in raw.items() if k not in known}
        config = cls(**values, extra=extra)
        config.validate(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"{path}: no config.json here")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    # -- validation ----------------------------------------------------------------------------------------
    def validate(self, source: str = "config.json") -> None:
        def bad(field_name: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: field '{field_name}' = {getattr(self, field_name, None)!r}: {why}")

        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise bad("model_type", f"unsupported; expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")
        positive = [
            "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "n_routed_experts", "num_experts_per_tok", "kv_lora_rank", "qk_nope_head_dim",
            "qk_rope_head_dim", "v_head_dim", "max_position_embeddings", "n_group", "topk_group",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(name, "must be a positive integer")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise bad("q_lora_rank", "must be a positive integer or null")
        if self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", "must be even (rope rotates pairs)")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise bad("first_k_dense_replace", "must be between 0 and num_hidden_layers")
        if self.moe_layer_freq != 1:
            raise bad("moe_layer_freq", "only 1 is supported (every layer after the dense ones is MoE)")
        if self.hidden_act != "silu":
            raise bad("hidden_act", "only 'silu' is supported")
        if self.scoring_func != "sigmoid":
            raise bad("scoring_func", "only 'sigmoid' is supported")
        if self.topk_method != "noaux_tc":
            raise bad("topk_method", "only 'noaux_tc' is supported")
        if self.n_routed_experts % self.n_group:
            raise bad("n_group", f"must divide n_routed_experts ({self.n_routed_experts})")
        if self.topk_group > self.n_group:
            raise bad("topk_group", f"must be <= n_group ({self.n_group})")
        per_group = self.n_routed_experts // self.n_group
        if self.num_experts_per_tok > self.topk_group * per_group:
            raise bad("num_experts_per_tok", "more than the experts in the selected groups")
        if self.n_group > 1 and per_group < 2:
            raise bad("n_group", "each group needs at least 2 experts (group score = sum of top-2)")
        if self.n_shared_experts < 0:
            raise bad("n_shared_experts", "must be >= 0")
        if self.attention_bias:
            raise bad("attention_bias", "attention biases are not supported")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise bad("rms_norm_eps", "must be a positive number")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind != "yarn":
                raise bad("rope_scaling", "only YaRN rope scaling is supported")
            for key in ("factor", "original_max_position_embeddings"):
                if key not in self.rope_scaling:
                    raise bad("rope_scaling", f"YaRN needs '{key}'")
        q = self.quantization_config
        if q is None:
            raise bad("quantization_config", "a block-fp8 checkpoint is required (quant_method 'fp8')")
        if q.get("quant_method") != "fp8":
            raise bad("quantization_config", "quant_method must be 'fp8'")
        if q.get("fmt", "e4m3") != "e4m3":
            raise bad("quantization_config", "fmt must be 'e4m3'")
        if list(q.get("weight_block_size", [])) != [128, 128]:
            raise bad("quantization_config", "weight_block_size must be [128, 128]")
