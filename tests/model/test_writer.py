import json

import numpy as np
import pytest

from kimi_local.model import writer
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.fp8 import dequantize
from kimi_local.model.presets import PRESETS
from kimi_local.model.writer import write_checkpoint


def test_tiny_checkpoint_has_kimi_files(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tiktoken.model",
            "tokenizer_config.json"} <= names
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    assert any(k.endswith("rotary_emb.inv_freq") for k in index["weight_map"])  # stored like Kimi's, then ignored
    assert index["metadata"]["total_size"] > 0


def test_weights_are_blockwise_quantized_gaussians(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    codes, scales = ckpt.fp8_weight("model.layers.0.mlp.gate_proj")  # [320, 192]: partial blocks both ways
    w = dequantize(codes, scales)
    assert abs(float(w.std()) * np.sqrt(192) - 1.0) < 0.1
    # the absmax of every block (partial ones too) is quantized to exactly 448 = code 0x7e
    magnitude = codes & 0x7F
    for r in range(0, 320, 128):
        for c in range(0, 192, 128):
            assert magnitude[r : r + 128, c : c + 128].max() == 0x7E


def test_large_tensors_use_the_pooled_path_with_same_statistics(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "DIRECT_LIMIT", 1000)
    monkeypatch.setattr(writer, "POOL_ELEMENTS", 1 << 16)
    path = write_checkpoint(PRESETS["tiny"], tmp_path / "c", seed=1, num_shards=1, with_tokenizer=False)
    ckpt = Checkpoint.open(path)
    w = dequantize(*ckpt.fp8_weight("model.layers.1.mlp.experts.2.down_proj"))  # [192, 96]
    assert abs(float(w.std()) * np.sqrt(96) - 1.0) < 0.15
    other = dequantize(*ckpt.fp8_weight("model.layers.1.mlp.experts.3.down_proj"))
    assert not np.array_equal(w, other)


def test_same_seed_same_bytes_regardless_of_sharding(tmp_path):
    a = Checkpoint.open(write_checkpoint(PRESETS["tiny"], tmp_path / "a", seed=7, num_shards=1, with_tokenizer=False))
    b = Checkpoint.open(write_checkpoint(PRESETS["tiny"], tmp_path / "b", seed=7, num_shards=4, with_tokenizer=False))
    for name in ("model.layers.2.mlp.experts.9.up_proj.weight", "lm_head.weight", "model.norm.weight"):
        assert np.array_equal(a.numpy(name), b.numpy(name))


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(self, spec):
        raise OSError("disk full")

    monkeypatch.setattr(writer.WeightSynth, "other", boom)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(PRESETS["tiny"], tmp_path / "out", with_tokenizer=False)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_checkpoint(PRESETS["tiny"], tmp_path / "out", with_tokenizer=False)
    assert (tmp_path / "out" / "x").read_text() == "keep me"
