import json
import shutil
import struct

import numpy as np
import pytest
import torch

from kimi_local.model.checkpoint import Checkpoint, CheckpointError
from kimi_local.model.config import ConfigError
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts
from kimi_local.model.layout import checkpoint_tensors, expert_tensor_names


@pytest.fixture
def ckpt_dir(tiny_checkpoint, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def shard_of(path, name):
    return path / json.loads((path / "model.safetensors.index.json").read_text())["weight_map"][name]


def rewrite_header(shard, edit):
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    assert len(raw) == n, "edit must not grow the header"
    shard.write_bytes(data[:8] + raw + data[8 + n :])


def load_everything(path):
    ckpt = Checkpoint.open(path)
    KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), overlap_experts=False)
    for layer in ckpt.config.moe_layer_ids:
        for e in range(ckpt.config.n_routed_experts):
            ckpt.expert(layer, e)


def test_layout_names_dtypes_and_unpadded_shards(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    assert sorted(set(ckpt.weight_map.values())) == [f"model-{i}-of-3.safetensors" for i in (1, 2, 3)]
    expected = {s.name: s for s in checkpoint_tensors(ckpt.config)}
    assert set(ckpt.weight_map) == set(expected)
    for name, spec in expected.items():
        info = ckpt.info(name)
        assert (info.dtype, info.shape) == (spec.dtype, spec.shape)
    assert ckpt.info("model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv").shape == (2, 2)  # 192 x 192
    assert all("inv_freq" not in n for n in ckpt.names())
    assert ckpt.weight_map["model.embed_tokens.weight"] == "model-1-of-3.safetensors"
    assert ckpt.weight_map["lm_head.weight"] == "model-3-of-3.safetensors"


def test_expert_views_are_zero_copy_and_lazy(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    assert ckpt._shards == {}  # opening reads the index and config only
    w = ckpt.expert(1, 3)
    holders = {ckpt.weight_map[n] for n in expert_tensor_names(1, 3)}
    assert set(ckpt._shards) == holders  # only the shards holding this expert were opened
    for name, array in zip(expert_tensor_names(1, 3), (w.gate_q, w.gate_s, w.up_q, w.up_s, w.down_q, w.down_s)):
        assert np.shares_memory(array, ckpt.shard(ckpt.weight_map[name]).buffer)
        assert not array.flags.writeable
    assert w.gate_q.dtype == np.uint8 and w.gate_s.dtype == np.float32
    name = expert_tensor_names(1, 3)[0]
    info = ckpt.info(name)
    raw = (tiny_checkpoint / info.shard.name).read_bytes()[info.offset : info.offset + info.nbytes]
    assert raw == w.gate_q.tobytes()


def test_missing_shard_names_the_file(ckpt_dir):
    shard_of(ckpt_dir, "lm_head.weight").unlink()
    with pytest.raises(CheckpointError, match=r"model-3-of-3.safetensors: shard is missing"):
        load_everything(ckpt_dir)


def test_tensor_missing_from_index(ckpt_dir):
    index_path = ckpt_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.layers.1.mlp.gate.weight"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'model.layers.1.mlp.gate.weight' is missing from the index"):
        load_everything(ckpt_dir)


def test_tensor_missing_from_shard(ckpt_dir):
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    rewrite_header(shard_of(ckpt_dir, name), lambda h: h.pop(name))
    with pytest.raises(CheckpointError, match=r"model-\d-of-3.safetensors: tensor '.*experts.5.up_proj.weight' is listed"):
        load_everything(ckpt_dir)


def test_wrong_dtype(ckpt_dir):
    name = "model.layers.0.self_attn.o_proj.weight"

    def edit(h):
        h[name]["dtype"] = "U8"

    rewrite_header(shard_of(ckpt_dir, name), edit)
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.self_attn.o_proj.weight' has dtype U8, expected F8_E4M3"):
        load_everything(ckpt_dir)


def test_wrong_shape(ckpt_dir):
    name = "model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"

    def edit(h):
        h[name]["shape"] = [2, 1]  # same byte count as the right [1, 2] grid

    rewrite_header(shard_of(ckpt_dir, name), edit)
    with pytest.raises(CheckpointError, match=r"experts.0.gate_proj.weight_scale_inv' has shape \[2, 1\], expected \[1, 2\]"):
        load_everything(ckpt_dir)


def test_truncated_shard(ckpt_dir):
    shard = shard_of(ckpt_dir, "lm_head.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"model-3-of-3.safetensors: truncated shard: tensor '.*' ends at byte"):
        load_everything(ckpt_dir)


def test_corrupt_header(ckpt_dir):
    shard = shard_of(ckpt_dir, "model.embed_tokens.weight")
    data = bytearray(shard.read_bytes())
    data[10:14] = b"\xff\xfe{{"
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model-1-of-3.safetensors: corrupt safetensors header"):
        load_everything(ckpt_dir)


def test_unreadable_index_and_bad_shard_names(ckpt_dir):
    index_path = ckpt_dir / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        Checkpoint.open(ckpt_dir)
    index_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable index"):
        Checkpoint.open(ckpt_dir)


def test_bad_config_names_the_field(ckpt_dir):
    cfg_path = ckpt_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scoring_func"] = "softmax"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json: field 'scoring_func' = 'softmax'"):
        Checkpoint.open(ckpt_dir)


def test_fp8_tensor_refuses_a_plain_cast(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    with pytest.raises(CheckpointError, match="dequantize"):
        ckpt.tensor("model.layers.0.self_attn.o_proj.weight", torch.float32)
    assert ckpt.tensor("model.layers.0.self_attn.o_proj.weight").dtype == torch.float8_e4m3fn
