"""Input checks and normalization for the CPU (Numba) kernels' wrappers.

The kernels read weights exactly as the checkpoint reader hands them out: C-contiguous uint8 views, often
read-only views of an mmap. Numba compiles one machine-code variant per array type and read-only is part of
the type, so the single-matrix kernels get every weight as a read-only view (no copy), whatever it came as:
one compiled variant serves mmap views, cache buffers and test arrays alike.
"""

from __future__ import annotations

import numpy as np

from kimi_local.model.fp8 import scale_grid_shape


def readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def check_fp8_weight(name: str, codes: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`check_fp8_arrays`, then both as read-only views."""
    codes, scales = check_fp8_arrays(name, codes, scales)
    return readonly(codes), readonly(scales)


def check_fp8_arrays(name: str, codes: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate uint8 e4m3 codes `[N, K]` (C order, never copied) and their float32 ceil-grid scales (copied
    only if misaligned or strided: a few KiB)."""
    if not isinstance(codes, np.ndarray) or not isinstance(scales, np.ndarray):
        raise TypeError(f"{name}: codes and scales must be numpy arrays, got {type(codes).__name__} and "
                        f"{type(scales).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(f"{name}: codes must be uint8 e4m3 bytes, got dtype {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"{name}: codes must be a non-empty [N, K] matrix, got shape {codes.shape}")
    if not codes.flags.c_contiguous:
        raise ValueError(f"{name}: codes must be C-contiguous (the checkpoint's native layout), got strides "
                         f"{codes.strides}")
    if scales.dtype != np.float32:
        raise TypeError(f"{name}: scales must be float32, got {scales.dtype}")
    expected = scale_grid_shape(*codes.shape)
    if scales.shape != expected:
        raise ValueError(f"{name}: scale grid {scales.shape} does not fit codes {codes.shape}: expected {expected}")
    if not (scales.flags.c_contiguous and scales.flags.aligned):
        scales = scales.copy()
    return codes, scales


def check_activations(name: str, x: np.ndarray, width: int, ndim: int) -> np.ndarray:
    """float32 activations whose last dim is `width`; returned C-contiguous (copied if needed: they are small)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.ndim != ndim or x.shape[-1] != width:
        want = "[K]" if ndim == 1 else "[T, K]"
        raise ValueError(f"{name} has shape {x.shape}: expected {want} with K = {width}")
    return np.ascontiguousarray(x)
