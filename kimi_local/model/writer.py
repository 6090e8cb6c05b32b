"""Synthetic checkpoints in exactly the Kimi-K2 file layout.

`write_checkpoint(config_dict, out_dir)` writes random weights for any DeepSeek-V3-architecture config: the real
tensor names, dtypes and ceil-grid scale shapes (from `layout.checkpoint_tensors`), `model-i-of-n.safetensors`
shards (not zero-padded), `model.safetensors.index.json`, config.json, generation_config.json, the inv_freq
buffers, and a small Kimi-format tokenizer.

Writing streams: each shard's header is computed from the shapes first, then every tensor is generated and written
on its own, so a multi-GB checkpoint never needs its size in RAM. Everything goes to a temporary directory that
is renamed into place at the end: an interrupted write leaves nothing half-made.

Weights: linear layers are N(0, 1/fan_in) quantized per 128x128 block (s = absmax/448). Large tensors reuse a pool
of quantized Gaussian codes at a random offset with per-block scales of the same statistics, which writes at disk
speed yet has the same value distribution. Norm weights are 1 + small noise, the router bias small.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kimi_local.model.config import ModelConfig
from kimi_local.model.fp8 import E4M3_MAX, float32_to_e4m3, quantize, scale_grid_shape
from kimi_local.model.layout import TensorSpec, checkpoint_tensors
from kimi_local.model.checkpoint import INDEX_NAME, shard_file_name

log = logging.getLogger(__name__)

POOL_ELEMENTS = 1 << 24  # 16 M codes of quantized N(0, 1)
DIRECT_LIMIT = 1 << 22  # tensors up to this many elements are drawn and quantized for real
GAUSS_ABSMAX = 4.5  # typical max |x| of a 128x128 block of N(0, 1)
DEFAULT_SHARD_BYTES = 2 << 30

Progress = Callable[[int], None]  # called with bytes written


def _bf16_bytes(values: np.ndarray) -> bytes:
    """float32 -> bfloat16 bits, rounding to nearest even."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


class WeightSynth:
    def __init__(self, seed: int, config: ModelConfig):
        self.seed = seed
        self.config = config
        self._pool: np.ndarray | None = None

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    @property
    def pool(self) -> np.ndarray:
        if self._pool is None:
            g = np.random.default_rng([self.seed, 0x9E3779B9])
            x = g.standard_normal(POOL_ELEMENTS, dtype=np.float32)
            self._pool = float32_to_e4m3(x * (E4M3_MAX / GAUSS_ABSMAX))
        return self._pool

    def fp8_weight(self, spec: TensorSpec) -> tuple[bytes, bytes]:
        """(codes, scales) bytes for the linear `spec` (the weight spec, [N, K])."""
        num_rows, num_cols = spec.shape
        g = self.rng(spec.name)
        std = 1.0 / math.sqrt(num_cols)
        if num_rows * num_cols <= DIRECT_LIMIT:
            codes, scales = quantize(g.standard_normal((num_rows, num_cols), dtype=np.float32) * std)
            return codes.tobytes(), scales.tobytes()
        n = num_rows * num_cols
        start = int(g.integers(0, POOL_ELEMENTS))
        reps = -(-(start + n) // POOL_ELEMENTS)
        codes = np.tile(self.pool, reps)[start : start + n] if reps > 1 else self.pool[start : start + n]
        grid = scale_grid_shape(num_rows, num_cols)
        jitter = g.uniform(0.9, 1.1, size=grid).astype(np.float32)
        scales = (GAUSS_ABSMAX * std / E4M3_MAX) * jitter
        return codes.tobytes(), scales.astype(np.float32).tobytes()

    def other(self, spec: TensorSpec) -> bytes:
        g = self.rng(spec.name)
        name, shape = spec.name, spec.shape
        if name.endswith("rotary_emb.inv_freq"):
            c = self.config
            dim = c.qk_rope_head_dim
            values = 1.0 / (c.rope_theta ** (np.arange(0, 2 * shape[0], 2, dtype=np.float64) / max(dim, 1)))
            return _bf16_bytes(values.astype(np.float32))
        if name.endswith("e_score_correction_bias"):
            return (g.standard_normal(shape, dtype=np.float32) * 0.05).astype(np.float32).tobytes()
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            return _bf16_bytes(1.0 + 0.1 * g.standard_normal(shape, dtype=np.float32))
        if name.endswith("mlp.gate.weight"):
            return _bf16_bytes(g.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[1]))
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            std = 1.0 if name == "model.embed_tokens.weight" else 1.0 / math.sqrt(shape[1])
            return b"".join(
                _bf16_bytes(g.standard_normal((min(4096, shape[0] - r), shape[1]), dtype=np.float32) * std)
                for r in range(0, shape[0], 4096)
            )
        raise ValueError(f"no generator for tensor '{name}' ({spec.dtype} {list(shape)})")


def _assign_shards(specs: list[TensorSpec], num_shards: int) -> list[list[TensorSpec]]:
    """Split in order by bytes; a weight's `weight_scale_inv` always stays in its weight's shard."""
    total = sum(s.nbytes for s in specs)
    shards: list[list[TensorSpec]] = [[] for _ in range(num_shards)]
    done = 0
    idx = 0
    for spec in specs:
        if not spec.name.endswith(".weight_scale_inv"):
            idx = min(num_shards - 1, int(done * num_shards / max(total, 1)))
        shards[idx].append(spec)
        done += spec.nbytes
    return [s for s in shards if s]


def _header(specs: list[TensorSpec]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        entries[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_checkpoint(
    config_dict: dict[str, Any],
    out_dir: str | Path,
    seed: int = 0,
    num_shards: int | None = None,
    progress: Progress | None = None,
    with_tokenizer: bool = True,
) -> Path:
    """Write a random-weight checkpoint for `config_dict` to `out_dir` (which must not exist yet)."""
    out_dir = Path(out_dir).expanduser()
    config = ModelConfig.from_dict(config_dict, source="checkpoint config")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: already exists and is not empty")
    specs = checkpoint_tensors(config)
    weight_specs = {s.name: s for s in specs}
    total = sum(s.nbytes for s in specs)
    if num_shards is None:
        num_shards = max(1, -(-total // DEFAULT_SHARD_BYTES))
    shards = _assign_shards(specs, num_shards)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        synth = WeightSynth(seed, config)
        weight_map: dict[str, str] = {}
        for i, shard_specs in enumerate(shards, start=1):
            file_name = shard_file_name(i, len(shards))
            with open(tmp / file_name, "wb") as f:
                f.write(_header(shard_specs))
                for spec in shard_specs:
                    if spec.name.endswith(".weight_scale_inv"):
                        continue  # written together with its weight, which precedes it
                    if spec.dtype == "F8_E4M3":
                        codes, scales = synth.fp8_weight(spec)
                        f.write(codes)
                        f.write(scales)
                        scale_spec = weight_specs[spec.name + "_scale_inv"]
                        weight_map[spec.name] = weight_map[scale_spec.name] = file_name
                        written = spec.nbytes + scale_spec.nbytes
                    else:
                        f.write(synth.other(spec))
                        weight_map[spec.name] = file_name
                        written = spec.nbytes
                    if progress:
                        progress(written)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
        num_base = config.vocab_size - 256
        generation = {"bos_token_id": num_base, "eos_token_id": num_base + 2, "do_sample": True, "temperature": 0.6}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if with_tokenizer:
            from kimi_local.text.demo_tokenizer import write_demo_tokenizer

            write_demo_tokenizer(tmp, config.vocab_size)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def checkpoint_bytes(config_dict: dict[str, Any]) -> int:
    return sum(s.nbytes for s in checkpoint_tensors(ModelConfig.from_dict(config_dict)))
