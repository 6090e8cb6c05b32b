"""The loader builds the resident model in the configured compute dtype, and the KV cache matches it."""

from __future__ import annotations

import pytest
import torch

from kimi_local.config import Config, EngineSection
from kimi_local.engine.loader import load
from kimi_local.engine.sampling import SamplingParams


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_resident_layers_and_kv_cache_use_the_configured_dtype(tiny_checkpoint, name, dtype):
    config = Config(engine=EngineSection(device="cpu", dtype=name, expert_backend="torch", max_context=32,
                                         max_batch=1))
    loaded = load(tiny_checkpoint, config)
    try:
        model = loaded.model
        assert model.dtype == dtype
        assert {t.dtype for t in loaded.engine.cache.kv + loaded.engine.cache.pe} == {dtype}
        attn = model.layers[0].self_attn
        assert model.embed_tokens.dtype == dtype and model.lm_head.dtype == dtype and attn.kv_b.dtype == dtype
        tokens = list(loaded.engine.generate([1, 2, 3, 4, 5], SamplingParams(max_new_tokens=6, temperature=0.0)))
        assert len(tokens) == 6 and all(0 <= t < model.config.vocab_size for t in tokens)
    finally:
        loaded.close()
