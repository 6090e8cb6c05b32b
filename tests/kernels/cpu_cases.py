"""Random block-fp8 weights and experts for the CPU kernel tests (codes cover every non-NaN e4m3 value,
subnormals included, scales vary per block so a wrong block index shows)."""

from __future__ import annotations

import numpy as np

from kimi_local.model.experts import ExpertWeights
from kimi_local.model.fp8 import scale_grid_shape


def random_codes(rng: np.random.Generator, shape) -> np.ndarray:
    codes = rng.integers(0, 256, size=shape, dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] ^= 1  # 0x7f/0xff are NaN: use 0x7e/0xfe instead
    return codes


def random_fp8(rng: np.random.Generator, shape, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    scales = (rng.uniform(0.25, 1.0, size=scale_grid_shape(*shape)) * scale / 448).astype(np.float32)
    return random_codes(rng, shape), scales


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only zero-copy view, like the checkpoint reader's views of its mmap."""
    view = np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)
    assert not view.flags.writeable
    return view


def random_expert(rng: np.random.Generator, inter: int, hidden: int, readonly: bool = False) -> ExpertWeights:
    arrays = []
    for shape in ((inter, hidden), (inter, hidden), (hidden, inter)):
        codes, scales = random_fp8(rng, shape, scale=4.0 / np.sqrt(shape[1]))
        arrays += [read_only(codes), read_only(scales)] if readonly else [codes, scales]
    return ExpertWeights(*arrays)
