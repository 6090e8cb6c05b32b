"""YaRN rotary embedding with Kimi-K2's interleaved-pair convention.

Frequencies follow transformers' `_compute_yarn_parameters` exactly (the oracle): f_i = theta^(-2i/d); a linear
ramp between the correction dims for beta_fast/beta_slow (floored/ceiled) blends f_i and f_i/factor. For Kimi-K2
(d 64, theta 50000, original context 4096, beta 1/1) that is a hard split: indices 0..19 unscaled, 20..31 divided
by 32. YaRN is always applied, whatever the runtime context.

Rotation acts on adjacent pairs (x[2i], x[2i+1]) of the stored weights' output order and keeps that layout;
transformers de-interleaves first (half-split output). Both give the same attention scores because q and k get
the same permutation. The cos/sin amplitude factor is mscale(factor, mscale) / mscale(factor, mscale_all_dim).
"""

from __future__ import annotations

import math

import torch

from kimi_local.model.config import ModelConfig


def _get_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [d/2] float32, cos/sin amplitude factor)."""
    dim = config.qk_rope_head_dim
    base = float(config.rope_theta)
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    pos_freqs = base**exponents
    rs = config.rope_scaling
    if not rs:
        return 1.0 / pos_freqs, 1.0
    factor = float(rs["factor"])
    original = int(rs["original_max_position_embeddings"])
    beta_fast = float(rs.get("beta_fast") or 32)
    beta_slow = float(rs.get("beta_slow") or 1)
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = _get_mscale(factor, mscale) / _get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _get_mscale(factor)

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_factor = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_factor) + (1.0 / pos_freqs) * extrapolation_factor
    return inv_freq, float(attention_factor)


class RotaryEmbedding:
    """cos/sin per position; `apply` rotates interleaved pairs on the last dim."""

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu"):
        inv_freq, self.attention_factor = rope_frequencies(config)
        self.inv_freq = inv_freq.to(device)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [N, d/2]
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [N, ..., d] with cos/sin [N, d/2]: rotate (x[2i], x[2i+1]) by angle i."""
        shape = x.shape
        pairs = x.float().reshape(*shape[:-1], shape[-1] // 2, 2)
        while cos.dim() < pairs.dim() - 1:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        even, odd = pairs[..., 0], pairs[..., 1]
        out = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
        return out.reshape(shape).to(x.dtype)
