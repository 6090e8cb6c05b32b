import dataclasses

import torch

from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.setup import build_cached_experts
from kimi_local.config import Config
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.experts import TorchReferenceExperts


def test_build_from_config(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the profile goes to the user cache directory
    config = Config()
    config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, pinned=("2:5",), io_threads=2))
    with Checkpoint.open(tiny_checkpoint) as ckpt:
        experts = build_cached_experts(ckpt, config, tiny_checkpoint, 4 * expert_slot_bytes(ckpt))
        store = experts.store
        assert store.policy.is_pinned(2 * 16 + 5) and store.arena.num_slots == 4
        x = torch.randn(3, 192)
        ids = torch.tensor([[0, 1, 2, 5]] * 3)
        w = torch.rand(3, 4)
        torch.testing.assert_close(experts(2, x, ids, w), TorchReferenceExperts(ckpt)(2, x, ids, w))
        store.close()
        assert store.profile_path.exists() and str(tmp_path) in str(store.profile_path)
