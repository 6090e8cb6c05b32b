"""`verify_checkpoint` on deliberately corrupted copies of a tiny checkpoint: each problem reported by name, and
all of them at once."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from kimi_local.model.checkpoint import INDEX_NAME
from kimi_local.model.presets import PRESETS
from kimi_local.model.verify import bytes_to_read, verify_checkpoint
from kimi_local.model.writer import write_checkpoint

Q_A = "model.layers.1.self_attn.q_a_proj"  # tiny: [96, 192] fp8 with a [1, 2] scale grid
EXPERT = "model.layers.2.mlp.experts.5.up_proj.weight"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_checkpoint(PRESETS["tiny"], tmp_path_factory.mktemp("verify") / "tiny", num_shards=3,
                            with_tokenizer=False)


@pytest.fixture
def ckpt(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "copy"))


def shard_of(path: Path, name: str) -> Path:
    return path / json.loads((path / INDEX_NAME).read_text())["weight_map"][name]


def read_header(shard: Path) -> tuple[dict, int]:
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), n


def rewrite_header(shard: Path, header: dict) -> None:
    """Same-length rewrite (data offsets stay valid): pads with spaces, as safetensors does."""
    raw = bytearray(shard.read_bytes())
    _, n = read_header(shard)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    raw[8 : 8 + n] = text + b" " * (n - len(text))
    shard.write_bytes(bytes(raw))


def tensor_offset(shard: Path, name: str) -> int:
    header, n = read_header(shard)
    return 8 + n + header[name]["data_offsets"][0]


def messages(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_pristine_checkpoint_is_clean_and_read_to_the_end(pristine):
    seen = []
    report = verify_checkpoint(pristine, progress=seen.append, check_values=True)
    assert report.ok and not report.problems, messages(report)
    assert report.num_shards == 3 and report.num_tensors == len(json.loads((pristine / INDEX_NAME).read_text())["weight_map"])
    total = sum(p.stat().st_size for p in pristine.glob("*.safetensors"))
    assert report.bytes_read == sum(seen) == bytes_to_read(pristine) == total


def test_truncated_shard_names_shard_and_cut_tensors(ckpt):
    shard = shard_of(ckpt, "lm_head.weight")
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    report = verify_checkpoint(ckpt)
    assert not report.ok
    cut = [p for p in report.errors if "truncated shard" in p.message]
    assert cut and all(p.file == shard.name for p in cut)
    assert "lm_head.weight" in {p.tensor for p in cut}


def test_flipped_header_byte_names_the_shard(ckpt):
    shard = shard_of(ckpt, Q_A + ".weight")
    raw = bytearray(shard.read_bytes())
    raw[8] ^= 0xFF  # the header's opening '{'
    shard.write_bytes(bytes(raw))
    report = verify_checkpoint(ckpt)
    assert len(report.errors) == 1 and report.errors[0].file == shard.name
    assert str(report.errors[0]).startswith(f"error: {shard.name}: corrupt header: not valid JSON")


def test_flipped_header_length_names_the_shard(ckpt):
    shard = shard_of(ckpt, Q_A + ".weight")
    raw = bytearray(shard.read_bytes())
    raw[7] ^= 0x10  # the length's top byte: a length far beyond the file
    shard.write_bytes(bytes(raw))
    report = verify_checkpoint(ckpt)
    assert len(report.errors) == 1 and report.errors[0].file == shard.name
    assert "corrupt header: length field" in report.errors[0].message


def test_missing_tensor_is_named(ckpt):
    index = json.loads((ckpt / INDEX_NAME).read_text())
    del index["weight_map"][EXPERT]
    (ckpt / INDEX_NAME).write_text(json.dumps(index))
    report = verify_checkpoint(ckpt)
    missing = [p for p in report.errors if p.message == "missing from the index"]
    assert [(p.file, p.tensor) for p in missing] == [(INDEX_NAME, EXPERT)]
    # the tensor is still in its shard, just not indexed: a warning, named too
    assert any(p.tensor == EXPERT and "not in the index" in p.message for p in report.warnings)


def test_tensor_missing_from_its_shard_is_named(ckpt):
    shard = shard_of(ckpt, EXPERT)
    header, _ = read_header(shard)
    header["model.layers.2.mlp.experts.5.up_proj.weighX"] = header.pop(EXPERT)  # same length
    rewrite_header(shard, header)
    report = verify_checkpoint(ckpt)
    assert any(p.tensor == EXPERT and p.message == "listed in the index but not in the shard" for p in report.errors)


def test_wrong_scale_grid_is_named(ckpt):
    name = Q_A + ".weight_scale_inv"
    shard = shard_of(ckpt, name)
    header, _ = read_header(shard)
    assert header[name]["shape"] == [1, 2]
    header[name]["shape"] = [2, 1]  # same bytes, wrong grid
    rewrite_header(shard, header)
    report = verify_checkpoint(ckpt)
    assert len(report.errors) == 1
    problem = report.errors[0]
    assert (problem.file, problem.tensor) == (shard.name, name)
    assert problem.message == "wrong scale grid [2, 1]: expected [1, 2] (ceil of the weight [96, 192] / 128 = [1, 2])"


def test_wrong_dtype_and_shape_are_named(ckpt):
    norm = "model.layers.0.input_layernorm.weight"
    shard = shard_of(ckpt, norm)
    header, _ = read_header(shard)
    header[norm]["dtype"] = "F16"  # same size as BF16
    rewrite_header(shard, header)
    shard2 = shard_of(ckpt, EXPERT)
    header2, _ = read_header(shard2)
    header2[EXPERT]["shape"] = [192, 96]  # transposed: same bytes
    rewrite_header(shard2, header2)
    report = verify_checkpoint(ckpt)
    found = {(p.tensor, p.message) for p in report.errors}
    assert (norm, "dtype F16, expected BF16") in found
    assert (EXPERT, "shape [192, 96], expected [96, 192]") in found


def test_missing_shard_is_named_with_its_tensors(ckpt):
    shard = shard_of(ckpt, "lm_head.weight")
    shard.unlink()
    report = verify_checkpoint(ckpt)
    assert len(report.errors) == 1
    assert report.errors[0].file == shard.name and "shard is missing" in report.errors[0].message


def test_nan_scale_and_nan_fp8_codes(ckpt):
    shard = shard_of(ckpt, Q_A + ".weight")
    raw = bytearray(shard.read_bytes())
    at = tensor_offset(shard, Q_A + ".weight_scale_inv")
    raw[at : at + 4] = np.float32(np.nan).tobytes()
    at = tensor_offset(shard, Q_A + ".weight")
    raw[at] = 0x7F
    shard.write_bytes(bytes(raw))
    plain = verify_checkpoint(ckpt)
    assert [(p.tensor, p.message) for p in plain.errors] == [(Q_A + ".weight_scale_inv", "contains NaN or inf")]
    deep = verify_checkpoint(ckpt, check_values=True)
    assert (Q_A + ".weight", "contains NaN codes (0x7f/0xff)") in {(p.tensor, p.message) for p in deep.errors}


def test_every_problem_is_reported_not_just_the_first(ckpt):
    index = json.loads((ckpt / INDEX_NAME).read_text())
    del index["weight_map"][EXPERT]
    index["weight_map"]["model.layers.9.mlp.gate.weight"] = index["weight_map"]["lm_head.weight"]
    (ckpt / INDEX_NAME).write_text(json.dumps(index))
    name = Q_A + ".weight_scale_inv"
    header, _ = read_header(shard_of(ckpt, name))
    header[name]["shape"] = [2, 1]
    rewrite_header(shard_of(ckpt, name), header)
    lm_shard = shard_of(ckpt, "lm_head.weight")
    with open(lm_shard, "r+b") as f:
        f.truncate(lm_shard.stat().st_size - 10)
    report = verify_checkpoint(ckpt)
    text = "\n".join(messages(report))
    assert f"tensor '{EXPERT}': missing from the index" in text
    assert f"tensor '{name}': wrong scale grid" in text
    assert "tensor 'lm_head.weight': truncated shard" in text
    assert "warning: model.safetensors.index.json: tensor 'model.layers.9.mlp.gate.weight': not part of" in text
    assert "model.layers.9.mlp.gate.weight' is listed in the index but not in the shard" not in text


def test_bad_config_and_bad_index(ckpt, tmp_path):
    (ckpt / INDEX_NAME).write_text("{not json")
    report = verify_checkpoint(ckpt)
    assert [p.file for p in report.errors] == [INDEX_NAME] and "unreadable index" in report.errors[0].message
    (ckpt / "config.json").write_text(json.dumps({**PRESETS["tiny"], "hidden_act": "gelu"}))
    report = verify_checkpoint(ckpt)
    assert [p.file for p in report.errors] == ["config.json"] and "hidden_act" in report.errors[0].message
    assert not verify_checkpoint(tmp_path / "nowhere").ok


def test_headers_only_reads_no_data(pristine):
    report = verify_checkpoint(pristine, read_data=False)
    assert report.ok and report.bytes_read == 0 and report.num_tensors > 0


def test_overlapping_tensors_are_named(ckpt):
    shard = shard_of(ckpt, Q_A + ".weight")
    header, _ = read_header(shard)
    names = [n for n in header if n != "__metadata__"]
    a, b = sorted(names, key=lambda n: header[n]["data_offsets"][0])[:2]
    size_b = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    start = header[a]["data_offsets"][0]
    header[b]["data_offsets"] = [start, start + size_b]
    rewrite_header(shard, header)
    report = verify_checkpoint(ckpt)
    assert any("overlaps tensor" in p.message and {p.tensor} <= {a, b} for p in report.errors)
