"""The model against transformers' DeepseekV3ForCausalLM (the numerical oracle), on three configs."""

from __future__ import annotations

import pytest
import torch

from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import Batch, KimiModel, KVCache
from kimi_local.model.experts import TorchReferenceExperts
from kimi_local.model.writer import write_checkpoint
from tests.model.configs import ORACLE_CONFIGS
from tests.oracle import load_oracle, oracle_greedy, oracle_logits

PROMPT = [5, 17, 300, 2, 999, 45, 77, 123, 400, 11, 600, 7]


@pytest.fixture(scope="module", params=sorted(ORACLE_CONFIGS))
def pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    ckpt = Checkpoint.open(write_checkpoint(ORACLE_CONFIGS[request.param], root / "ckpt", seed=3, num_shards=2,
                                            with_tokenizer=False))
    ours = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), overlap_experts=False)
    return ours, load_oracle(ckpt, root / "oracle")


def prefill_logits(model: KimiModel, ids: list[int]) -> torch.Tensor:
    cache = KVCache.allocate(model.config, 1, 64, torch.float32, "cpu")
    n = len(ids)
    return model(Batch(torch.tensor(ids), torch.arange(n), torch.zeros(n, dtype=torch.long), True), cache)


def test_logits_match_oracle(pair):
    ours, oracle = pair
    expected = oracle_logits(oracle, PROMPT)
    got = prefill_logits(ours, PROMPT)
    rel = (got - expected).abs().max() / expected.abs().max()
    print(f"max |diff| {float((got - expected).abs().max()):.3g}, relative {float(rel):.3g}")
    assert rel < 1e-4


def test_absorbed_decode_matches_oracle_at_every_position(pair):
    ours, oracle = pair
    expected = oracle_logits(oracle, PROMPT)
    cache = KVCache.allocate(ours.config, 3, 64, torch.float32, "cpu")
    slot = torch.tensor([2])
    ours(Batch(torch.tensor(PROMPT[:1]), torch.tensor([0]), slot, True), cache)
    for t in range(1, len(PROMPT)):
        got = ours(Batch(torch.tensor([PROMPT[t]]), torch.tensor([t]), slot, False), cache)[0]
        assert (got - expected[t]).abs().max() / expected[t].abs().max() < 1e-4, f"position {t}"


def test_greedy_generation_matches_oracle_for_32_steps(pair):
    ours, oracle = pair
    engine = Engine(ours, max_context=64, max_batch=2, prefill_chunk=5)
    got = list(engine.generate(PROMPT, SamplingParams(temperature=0, max_new_tokens=32)))
    assert got == oracle_greedy(oracle, PROMPT, 32)
