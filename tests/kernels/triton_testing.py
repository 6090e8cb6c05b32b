"""Shared pieces of the Triton kernel tests: the device they run on, random block-fp8 weights, tolerances.

Importing this module checks that the kernels can run here: on CUDA, or in the interpreter that
tests/kernels/conftest.py switches on before the kernel modules are imported.
"""

from __future__ import annotations

import torch

from kimi_local.kernels.triton_fp8_linear import is_interpreted
from kimi_local.model.fp8 import scale_grid_shape

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")

if not HAS_CUDA and not is_interpreted():
    raise RuntimeError(
        "kimi_local.kernels.triton_* were imported in compiled mode on a machine without CUDA: some module "
        "imported them before tests/kernels/conftest.py set TRITON_INTERPRET=1. Export TRITON_INTERPRET=1 for "
        "this run, or set it in tests/conftest.py."
    )

# Output dtype -> (rtol, atol as a fraction of the largest reference value).
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-4), torch.bfloat16: (1e-2, 2e-3)}


def random_codes(shape, generator: torch.Generator) -> torch.Tensor:
    """Uniform e4m3 codes over all finite values (subnormals and both signs included), NaN codes replaced."""
    codes = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    codes[(codes & 0x7F) == 0x7F] = 0x7E  # 0x7f / 0xff are NaN in e4m3fn; checkpoints never hold them
    return codes


def random_scales(num_rows: int, num_cols: int, generator: torch.Generator, *, lead=()) -> torch.Tensor:
    """Ceil-grid scales that differ per block, so a wrong block index shows."""
    shape = (*lead, *scale_grid_shape(num_rows, num_cols))
    return (torch.rand(shape, generator=generator) * 0.01 + 1e-3).float()


def random_fp8_weight(num_rows: int, num_cols: int, generator: torch.Generator, *, lead=()):
    return random_codes((*lead, num_rows, num_cols), generator), random_scales(num_rows, num_cols, generator, lead=lead)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol, atol_fraction = TOLERANCE[expected.dtype]
    scale = expected.float().abs().max().item()
    assert scale > 0, "degenerate test: the reference is all zeros"
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol_fraction * scale)
