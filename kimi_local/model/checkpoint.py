"""Lazy, zero-copy reader for sharded safetensors checkpoints in the Kimi-K2 layout.

The index (`model.safetensors.index.json`) is read for its `weight_map` only. A shard is opened the first time one
of its tensors is asked for: its header is parsed by hand (8-byte little-endian length, then JSON; the safetensors
library cannot read F8_E4M3 into numpy) and the file is memory-mapped read-only. Listing a 61-shard checkpoint
therefore reads one JSON file, and reading one expert touches one shard's header and that expert's bytes.

Routed-expert weights come back as numpy views of the mapping (uint8 e4m3 codes, float32 scales): no copy, so the
CPU kernels and the expert store read the page cache or the disk directly. Every problem (missing shard or tensor,
wrong dtype or shape, truncated file, corrupt header) raises `CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import json
import mmap
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kimi_local.model.config import ModelConfig
from kimi_local.model.experts import ExpertWeights
from kimi_local.model.layout import DTYPE_SIZES, TensorSpec, checkpoint_tensors, expert_tensor_names, is_ignored

INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024

NUMPY_DTYPES = {"F8_E4M3": np.uint8, "U8": np.uint8, "BF16": np.uint16, "F16": np.float16, "F32": np.float32,
                "I64": np.int64}
TORCH_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "U8": torch.uint8, "BF16": torch.bfloat16, "F16": torch.float16,
                "F32": torch.float32, "I64": torch.int64}


class CheckpointError(ValueError):
    """The checkpoint on disk is not what the config and index say it is."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shard: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the shard file
    nbytes: int


class Shard:
    """One safetensors file: parsed header plus a read-only mmap, opened on first use."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._header: dict[str, TensorInfo] | None = None
        self._mmap: mmap.mmap | None = None
        self._buffer: np.ndarray | None = None

    def _load_header(self) -> dict[str, TensorInfo]:
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: shard is missing")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: truncated shard (no safetensors header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(f"{self.path}: corrupt safetensors header (length {header_len})")
            raw = f.read(header_len)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not an object)")
        base = 8 + header_len
        infos: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = entry["dtype"]
                shape = tuple(int(d) for d in entry["shape"])
                start, end = (int(v) for v in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor '{name}': malformed header entry") from None
            if dtype not in DTYPE_SIZES:
                raise CheckpointError(f"{self.path}: tensor '{name}': unsupported dtype {dtype}")
            expected = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
            if end - start != expected or start < 0:
                raise CheckpointError(
                    f"{self.path}: tensor '{name}': data offsets [{start}, {end}) do not fit {dtype} {list(shape)}"
                )
            if base + end > size:
                raise CheckpointError(
                    f"{self.path}: truncated shard: tensor '{name}' ends at byte {base + end}, file has {size}"
                )
            infos[name] = TensorInfo(name, self.path, dtype, shape, base + start, end - start)
        return infos

    @property
    def header(self) -> dict[str, TensorInfo]:
        if self._header is None:
            with self._lock:
                if self._header is None:
                    self._header = self._load_header()
        return self._header

    @property
    def buffer(self) -> np.ndarray:
        if self._buffer is None:
            with self._lock:
                if self._buffer is None:
                    with open(self.path, "rb") as f:
                        self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    self._buffer = np.frombuffer(self._mmap, dtype=np.uint8)
        return self._buffer

    def close(self) -> None:
        # Views handed out keep the mapping alive through numpy's reference to it; drop ours only.
        self._buffer = None
        self._mmap = None


class Checkpoint:
    """A checkpoint directory: config.json, the index and its shards."""

    def __init__(self, path: Path, config: ModelConfig, weight_map: dict[str, str]):
        self.path = path
        self.config = config
        self.weight_map = weight_map
        self._shards: dict[str, Shard] = {}
        self._lock = threading.Lock()
        self._specs: dict[str, TensorSpec] = {s.name: s for s in checkpoint_tensors(config)}

    @classmethod
    def open(cls, path: str | Path) -> "Checkpoint":
        path = Path(path).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a checkpoint directory")
        config = ModelConfig.from_file(path / "config.json")
        index_path = path / INDEX_NAME
        if index_path.exists():
            try:
                index = json.loads(index_path.read_text())
                weight_map = index["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index_path}: unreadable index ({exc!r})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
            for shard_name in set(weight_map.values()):
                if Path(shard_name).name != shard_name:
                    raise CheckpointError(f"{index_path}: shard name '{shard_name}' is not a plain file name")
        elif (path / SINGLE_FILE_NAME).exists():
            shard = Shard(path / SINGLE_FILE_NAME)
            weight_map = {name: SINGLE_FILE_NAME for name in shard.header}
        else:
            raise CheckpointError(f"{path}: no {INDEX_NAME} and no {SINGLE_FILE_NAME}")
        return cls(path, config, weight_map)

    # -- lookup --------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Weight tensor names listed by the index (ignored buffers such as rotary_emb.inv_freq left out)."""
        return [n for n in self.weight_map if not is_ignored(n)]

    def shard(self, file_name: str) -> Shard:
        with self._lock:
            shard = self._shards.get(file_name)
            if shard is None:
                shard = self._shards[file_name] = Shard(self.path / file_name)
        return shard

    def info(self, name: str) -> TensorInfo:
        file_name = self.weight_map.get(name)
        if file_name is None:
            raise CheckpointError(f"{self.path / INDEX_NAME}: tensor '{name}' is missing from the index")
        shard = self.shard(file_name)
        info = shard.header.get(name)
        if info is None:
            raise CheckpointError(f"{shard.path}: tensor '{name}' is listed in the index but not in the shard")
        spec = self._specs.get(name)
        if spec is not None:
            if info.dtype != spec.dtype:
                raise CheckpointError(f"{shard.path}: tensor '{name}' has dtype {info.dtype}, expected {spec.dtype}")
            if info.shape != spec.shape and not is_ignored(name):
                raise CheckpointError(
                    f"{shard.path}: tensor '{name}' has shape {list(info.shape)}, expected {list(spec.shape)}"
                )
        return info

    def numpy(self, name: str) -> np.ndarray:
        """Zero-copy read-only view: uint8 for fp8 codes, uint16 bits for bf16, float32 for F32."""
        info = self.info(name)
        buf = self.shard(info.shard.name).buffer
        flat = buf[info.offset : info.offset + info.nbytes]
        return flat.view(NUMPY_DTYPES[info.dtype]).reshape(info.shape)

    def tensor(self, name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """A torch copy in its stored dtype (float8_e4m3fn, bfloat16, float32), optionally converted."""
        info = self.info(name)
        array = self.numpy(name)
        t = torch.from_numpy(array.copy()).view(TORCH_DTYPES[info.dtype])
        if dtype is not None and t.dtype != dtype:
            if info.dtype == "F8_E4M3":
                raise CheckpointError(f"tensor '{name}' is fp8: dequantize it with its scale, not a cast")
            t = t.to(dtype)
        return t.to(device)

    def fp8_weight(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """(codes uint8 [N, K], scales float32 grid) of the block-fp8 linear `prefix` (…/q_a_proj)."""
        return self.numpy(f"{prefix}.weight"), self.numpy(f"{prefix}.weight_scale_inv")

    # -- experts -------------------------------------------------------------------------------------------
    @staticmethod
    def expert_tensor_names(layer_idx: int, expert_id: int) -> tuple[str, ...]:
        return expert_tensor_names(layer_idx, expert_id)

    def check_expert(self, layer_idx: int, expert_id: int) -> None:
        if not self.config.is_moe_layer(layer_idx) or layer_idx >= self.config.num_hidden_layers:
            raise CheckpointError(f"layer {layer_idx} has no routed experts")
        if not 0 <= expert_id < self.config.n_routed_experts:
            raise CheckpointError(f"expert {expert_id} out of range (n_routed_experts={self.config.n_routed_experts})")

    def expert(self, layer_idx: int, expert_id: int) -> ExpertWeights:
        self.check_expert(layer_idx, expert_id)
        return ExpertWeights(*(self.numpy(n) for n in expert_tensor_names(layer_idx, expert_id)))

    get_expert = expert  # the ExpertSource interface

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_file_name(index: int, count: int) -> str:
    """Kimi-K2 naming: `model-1-of-61.safetensors`, not zero-padded."""
    return f"model-{index}-of-{count}.safetensors"
