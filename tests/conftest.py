"""Shared fixtures: small synthetic checkpoints written once per session, one torch thread (TOOLCHAIN.md: torch
with two OpenMP threads stalls when the other core is busy)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from kimi_local.model.presets import PRESET_SHARDS, PRESETS
from kimi_local.model.writer import write_checkpoint

torch.set_num_threads(1)

# Hermetic user directories: routing profiles, saved conversations, the demo checkpoint and config files that
# tests create go to a throw-away home, never the developer's (subprocesses inherit these).
_HOME = tempfile.mkdtemp(prefix="kimi-local-tests-")
for _var, _sub in (("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config")):
    os.environ[_var] = os.path.join(_HOME, _sub)


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
