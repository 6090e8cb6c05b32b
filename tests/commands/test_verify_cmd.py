"""`kimi-local verify`: exit status, every problem printed with its file and tensor, JSON output."""

from __future__ import annotations

import json
import shutil

from kimi_local.cli import main
from kimi_local.model.checkpoint import INDEX_NAME


def test_clean_checkpoint(capsys, tiny_checkpoint):
    assert main(["verify", "--model", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {tiny_checkpoint}:") and "0 errors, 0 warnings" in out


def test_corrupted_checkpoint_lists_every_problem(capsys, tiny_checkpoint, tmp_path):
    path = shutil.copytree(tiny_checkpoint, tmp_path / "bad")
    index = json.loads((path / INDEX_NAME).read_text())
    gone = ["model.layers.1.mlp.experts.0.down_proj.weight", "model.norm.weight"]
    for name in gone:
        del index["weight_map"][name]
    (path / INDEX_NAME).write_text(json.dumps(index))
    shard = path / index["weight_map"]["lm_head.weight"]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    assert main(["verify", "--model", str(path)]) == 1
    out = capsys.readouterr().out
    for name in gone:
        assert f"error: {INDEX_NAME}: tensor '{name}': missing from the index" in out
    assert f"error: {shard.name}: tensor 'lm_head.weight': truncated shard" in out
    assert out.strip().splitlines()[-1].startswith(f"FAILED: {path}")

    assert main(["verify", "--model", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {(p["file"], p["tensor"]) for p in report["problems"] if p["severity"] == "error"} >= {
        (INDEX_NAME, gone[0]), (INDEX_NAME, gone[1]), (shard.name, "lm_head.weight")}


def test_headers_only(capsys, tiny_checkpoint):
    assert main(["verify", "--model", str(tiny_checkpoint), "--headers-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes_read"] == 0


def test_missing_directory_is_one_line(capsys, tmp_path):
    assert main(["verify", "--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kimi-local verify: error:")
