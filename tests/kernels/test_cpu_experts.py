"""`NumbaExperts` as the model's routed-expert backend: against the torch reference backend on a checkpoint, and
the whole model with it against the transformers oracle (prefill and greedy decode)."""

from __future__ import annotations

import pytest
import torch

from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.kernels.cpu_experts import NumbaExperts, usable_threads
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts
from kimi_local.model.writer import write_checkpoint
from tests.model.configs import ORACLE_CONFIGS
from tests.model.test_oracle import PROMPT, prefill_logits
from tests.oracle import load_oracle, oracle_greedy, oracle_logits


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return Checkpoint.open(tiny_checkpoint)


@pytest.mark.parametrize("num_tokens,dtype", [(1, torch.float32), (9, torch.float32), (6, torch.bfloat16)])
def test_matches_the_torch_reference_backend(checkpoint, num_tokens, dtype):
    c = checkpoint.config
    gen = torch.Generator().manual_seed(num_tokens)
    x = torch.randn(num_tokens, c.hidden_size, generator=gen).to(dtype)
    ids = torch.stack([torch.randperm(c.n_routed_experts, generator=gen)[: c.num_experts_per_tok]
                       for _ in range(num_tokens)])
    weights = torch.rand(num_tokens, c.num_experts_per_tok, generator=gen)
    layer = c.first_k_dense_replace
    got = NumbaExperts(checkpoint, num_threads=2)(layer, x, ids, weights)
    expected = TorchReferenceExperts(checkpoint)(layer, x, ids, weights)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (got.float() - expected.float()).abs().max() <= tol * expected.float().abs().max()


def test_thread_count_is_checked():
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        usable_threads(0)
    assert usable_threads(10_000) >= 1


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("numba_oracle")
    ckpt = Checkpoint.open(write_checkpoint(ORACLE_CONFIGS["partial_blocks"], root / "ckpt", seed=3, num_shards=2,
                                            with_tokenizer=False))
    # overlap_experts: the experts run on the model's worker thread, as in the engine.
    ours = KimiModel.from_checkpoint(ckpt, NumbaExperts(ckpt, num_threads=2), overlap_experts=True)
    return ours, load_oracle(ckpt, root / "oracle")


def test_model_with_numba_experts_matches_oracle_logits(pair):
    ours, oracle = pair
    expected = oracle_logits(oracle, PROMPT)
    got = prefill_logits(ours, PROMPT)
    rel = float((got - expected).abs().max() / expected.abs().max())
    print(f"relative max |diff| {rel:.3g}")
    assert rel < 1e-4


def test_model_with_numba_experts_generates_like_oracle(pair):
    ours, oracle = pair
    engine = Engine(ours, max_context=64, max_batch=2, prefill_chunk=5)
    got = list(engine.generate(PROMPT, SamplingParams(temperature=0, max_new_tokens=16)))
    assert got == oracle_greedy(oracle, PROMPT, 16)
