"""Shared fixtures: small synthetic checkpoints written once per session, one torch thread (TOOLCHAIN.md: torch
with two OpenMP threads stalls when the other core is busy)."""

from __future__ import annotations

import pytest
import torch

from kimi_local.model.presets import PRESET_SHARDS, PRESETS
from kimi_local.model.writer import write_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The `tiny` preset: shapes that are not multiples of 128, 3 shards, with the demo tokenizer."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    return write_checkpoint(PRESETS["tiny"], path, seed=0, num_shards=PRESET_SHARDS["tiny"])


def gpu_available() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not gpu_available():
            item.add_marker(skip_gpu)
