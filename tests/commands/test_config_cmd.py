"""`kimi-local config init/show/path` on described machines."""

from __future__ import annotations

import json
import tomllib

import pytest

from kimi_local import settings, sizing
from kimi_local.cli import main
from kimi_local.commands.config_cmd import render_toml, toml_value
from kimi_local.config import SPECS, Config, build_config
from kimi_local.footprint import footprint
from kimi_local.model.config import ModelConfig
from kimi_local.model.presets import KIMI_K2_CONFIG
from kimi_local.settings import read_config_file, resolve_settings
from kimi_local.sizing import GiB, GpuInfo

K2 = footprint(ModelConfig.from_dict(KIMI_K2_CONFIG))


def init(capsys, *argv) -> dict:
    assert main(["config", "init", "--stdout", *argv]) == 0
    return tomllib.loads(capsys.readouterr().out)


def test_init_on_a_cpu_workstation_sizes_for_kimi_k2(capsys, fake_machine):
    m = fake_machine(ram_gib=512, available_gib=500, cores=32)
    written = init(capsys)
    assert written["engine"]["threads"] == 32
    assert written["engine"]["dtype"] == "bfloat16"  # float32 resident layers would take ~44 GiB more of RAM
    cpu_side = sizing.cpu_resident_bytes(build_config({"engine.dtype": "bfloat16"}), K2, m)
    usable = min(512 * GiB - sizing.ram_headroom_bytes(m), 500 * GiB)
    assert written["cache"]["ram_gb"] * GiB <= usable - cpu_side < (written["cache"]["ram_gb"] + 0.1) * GiB
    assert written["engine"]["gpu_memory_gb"] == 0 and written["cache"]["gpu_gb"] == 0
    assert written["model"] == ""


def test_init_with_a_gpu_sizes_gpu_budget_and_tier(capsys, fake_machine):
    fake_machine(ram_gib=128, available_gib=126, cores=16, gpus=(GpuInfo("NVIDIA H200", 140 * GiB, 139 * GiB),))
    written = init(capsys)
    assert written["engine"]["dtype"] == "auto" and written["engine"]["device"] == "auto"
    assert 0.9 * 139 - 0.1 - 1e-6 < written["engine"]["gpu_memory_gb"] <= 0.9 * 139
    assert 0 < written["cache"]["gpu_gb"] < written["engine"]["gpu_memory_gb"]
    assert written["cache"]["ram_gb"] == pytest.approx(128 - 12.8, abs=0.1)  # resident layers live on the GPU


def test_init_caps_the_cache_at_the_model_size(capsys, fake_machine, tiny_checkpoint):
    fake_machine(ram_gib=64)
    written = init(capsys, "--model", str(tiny_checkpoint))
    assert written["model"] == str(tiny_checkpoint.resolve())
    assert written["cache"]["ram_gb"] == 0  # auto: every routed expert fits, exactly (no rounding)
    assert "they all fit, so 0 (auto) takes exactly them" in init_text_of(capsys, tiny_checkpoint)


def init_text_of(capsys, model) -> str:
    assert main(["config", "init", "--stdout", "--model", str(model)]) == 0
    return capsys.readouterr().out


def test_init_on_a_small_machine_notes_it(capsys, fake_machine):
    fake_machine(ram_gib=16, cores=4)
    assert main(["config", "init", "--stdout"]) == 0
    text = capsys.readouterr().out
    assert "Note: RAM is too small for a useful expert cache" in text
    assert tomllib.loads(text)["cache"]["ram_gb"] == 0


def test_init_writes_a_commented_file_that_loads_back(capsys, fake_machine, tmp_path):
    fake_machine(ram_gib=96, cores=12)
    target = tmp_path / "cfg" / "kimi-local.toml"
    assert main(["--config", str(target), "config", "init"]) == 0
    assert f"wrote {target}" in capsys.readouterr().out
    text = target.read_text()
    for spec in SPECS.values():
        assert spec.rule.help[1:] in text  # every setting is explained
    s = resolve_settings(argparse_ns(config_path=str(target)), env={})
    assert s.config.engine.threads == 12 and s.source("engine.threads") == str(target)
    assert main(["--config", str(target), "config", "init"]) == 1
    assert "already exists (use --force" in capsys.readouterr().err
    assert main(["--config", str(target), "config", "init", "--force"]) == 0


def test_init_writes_to_the_default_location(capsys, fake_machine):
    fake_machine()
    assert main(["config", "init"]) == 0
    assert settings.default_config_path().is_file()


def argparse_ns(**kwargs):
    import argparse

    return argparse.Namespace(**kwargs)


def test_show_names_every_source(capsys, fake_machine, tmp_path, monkeypatch):
    fake_machine(cores=6)
    path = tmp_path / "k.toml"
    path.write_text("[engine]\nmax_context = 4096\n[server]\nport = 9001\n")
    monkeypatch.setenv("KIMI_LOCAL_SERVER_PORT", "9002")
    assert main(["--config", str(path), "config", "show", "--max-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert f"# config file: {path} (--config; found)" in out
    assert f"max_context = 4096  # {path}" in out
    assert "port = 9002  # env KIMI_LOCAL_SERVER_PORT" in out
    assert "max_batch = 2  # flag --max-batch" in out
    assert "threads = 0  # default; auto: 6 physical cores" in out
    assert tomllib.loads(out)["engine"]["max_context"] == 4096  # the output is itself a valid config


def test_show_json(capsys, fake_machine, tmp_path):
    fake_machine()
    assert main(["config", "show", "--json", "--port", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["values"]["server.port"] == {"value": 1, "source": "flag --port", "env": "KIMI_LOCAL_SERVER_PORT"}
    assert shown["file"]["exists"] is False and set(shown["values"]) == set(SPECS)


def test_show_reports_a_bad_file_in_one_line(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[cache]\nram_gb = 'lots'\n")
    assert main(["--config", str(path), "config", "show"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kimi-local config: error: {path}: 'cache.ram_gb' = 'lots': must be a number >= 0"]


def test_path(capsys, tmp_path):
    assert main(["config", "path"]) == 0
    assert str(settings.default_config_path()) in capsys.readouterr().out


@pytest.mark.parametrize("value", [True, 3, 2.5, "a \"quoted\" \\ tab\t \x7f é 😀 new\nline", ("1:2", "3:4"), ()])
def test_toml_values_round_trip(value):
    assert tomllib.loads(f"x = {toml_value(value)}")["x"] == (list(value) if isinstance(value, tuple) else value)


def test_render_round_trips_a_whole_config(tmp_path):
    config = build_config({"model": "/m", "engine.threads": 3, "cache.pinned": ("1:1",), "tui.system_prompt": "é\n"})
    path = tmp_path / "c.toml"
    path.write_text(render_toml(config, {"engine.threads": ["a comment"]}))
    assert build_config(read_config_file(path)) == config
    assert render_toml(Config(), {}).count("[") >= 4
