"""Settings: defaults < TOML file < KIMI_LOCAL_* environment < flags, with every value's source, and errors that
name the key and the file, variable or flag."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from kimi_local import settings
from kimi_local.config import SPECS
from kimi_local.settings import (SettingsError, add_config_flags, env_var, load_settings, locate_config,
                                 read_config_file, resolve_settings)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real user config file and no KIMI_LOCAL_* variables from the developer's shell."""
    for var in list(os.environ):
        if var.startswith("KIMI_LOCAL_"):
            monkeypatch.delenv(var)
    monkeypatch.setattr(settings, "default_config_path", lambda: tmp_path / "default" / "kimi-local.toml")


def write(tmp_path: Path, text: str, name: str = "kimi-local.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def parser(sections=("engine", "cache", "server", "tui")) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--config", dest="config_path")
    p.add_argument("--model")
    add_config_flags(p, sections)
    return p


def test_defaults_without_any_file(tmp_path):
    s = resolve_settings(parser().parse_args([]), env={})
    assert s.config.engine.threads == 0 and s.config.cache.prefetch is True
    assert set(s.sources.values()) == {"default"}
    assert not s.file.exists and s.file.chosen_by == "default location"


def test_precedence_file_then_env_then_flag(tmp_path):
    path = write(tmp_path, "[engine]\nthreads = 3\nmax_context = 2048\n[cache]\nram_gb = 10\nprefetch = false\n"
                           "[server]\nport = 9000\n")
    args = parser().parse_args(["--config", str(path), "--threads", "5", "--no-prefetch"])
    env = {"KIMI_LOCAL_ENGINE_THREADS": "4", "KIMI_LOCAL_CACHE_RAM_GB": "12.5", "KIMI_LOCAL_SERVER_HOST": "0.0.0.0"}
    s = resolve_settings(args, env=env)
    c = s.config
    assert (c.engine.threads, s.source("engine.threads")) == (5, "flag --threads")
    assert (c.cache.ram_gb, s.source("cache.ram_gb")) == (12.5, "env KIMI_LOCAL_CACHE_RAM_GB")
    assert (c.server.host, s.source("server.host")) == ("0.0.0.0", "env KIMI_LOCAL_SERVER_HOST")
    assert (c.engine.max_context, s.source("engine.max_context")) == (2048, str(path))
    assert (c.server.port, s.source("server.port")) == (9000, str(path))
    assert (c.cache.prefetch, s.source("cache.prefetch")) == (False, "flag --no-prefetch")
    assert (c.engine.max_batch, s.source("engine.max_batch")) == (4, "default")


def test_every_setting_can_come_from_each_layer(tmp_path):
    """Each key read from the file, then overridden by its env variable, then by its flag."""
    samples = {"model": str(tmp_path), "engine.device": "cpu", "engine.dtype": "bfloat16", "engine.threads": 7,
               "engine.max_context": 100, "engine.max_batch": 2, "engine.prefill_chunk": 16,
               "engine.gpu_memory_gb": 5.5, "engine.expert_backend": "torch", "engine.cuda_graphs": False,
               "cache.ram_gb": 3.0, "cache.gpu_gb": 1.0, "cache.pinned": ("1:2",), "cache.prefetch": False,
               "cache.io_threads": 2,
               "cache.profile": False, "server.host": "::1", "server.port": 1234, "server.api_key": "k",
               "server.max_queue": 3, "tui.system_prompt": "hi", "tui.temperature": 0.1, "tui.top_p": 0.5,
               "tui.max_tokens": 9}
    assert set(samples) == set(SPECS)
    for key, value in samples.items():
        spec = SPECS[key]
        text = ",".join(value) if isinstance(value, tuple) else str(value).lower() if isinstance(value, bool) else str(value)
        from_env = resolve_settings(None, env={env_var(key): text})
        assert from_env.config.get(key) == value, key
        assert from_env.source(key) == f"env {env_var(key)}"
        argv = [spec.rule.flag if value is not False else "--no-" + spec.rule.flag[2:]]
        if not isinstance(value, bool):
            argv.append(text)
        from_flag = resolve_settings(parser().parse_args(argv), env={env_var(key): text})
        assert from_flag.config.get(key) == value, key
        assert from_flag.source(key).startswith("flag --"), key


def test_unknown_key_names_key_and_file_with_suggestion(tmp_path):
    path = write(tmp_path, "[engine]\nthread = 2\n")
    with pytest.raises(SettingsError, match=rf"{path}: unknown key 'engine.thread' \(did you mean 'threads'\?\)"):
        resolve_settings(parser().parse_args(["--config", str(path)]), env={})


def test_unknown_section_and_top_level_key(tmp_path):
    path = write(tmp_path, "[engin]\nthreads = 2\n")
    with pytest.raises(SettingsError, match=r"unknown key 'engin' \(did you mean 'engine'\?\)"):
        read_config_file(path)
    path = write(tmp_path, "modle = '/x'\n")
    with pytest.raises(SettingsError, match=r"unknown key 'modle' \(did you mean 'model'\?\)"):
        read_config_file(path)


@pytest.mark.parametrize("text,key", [
    ("[engine]\nthreads = -1\n", "engine.threads"),
    ("[engine]\nthreads = '4'\n", "engine.threads"),
    ("[engine]\ndevice = 'tpu'\n", "engine.device"),
    ("[cache]\nram_gb = -3\n", "cache.ram_gb"),
    ("[cache]\npinned = ['1-2']\n", "cache.pinned"),
    ("[cache]\nprefetch = 'no'\n", "cache.prefetch"),
    ("[server]\nport = 123456\n", "server.port"),
    ("[tui]\ntop_p = 0.0\n", "tui.top_p"),
    ("model = 5\n", "model"),
])
def test_bad_value_in_file_names_key_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        read_config_file(path)
    assert str(err.value).startswith(f"{path}: '{key}'")


def test_section_that_is_not_a_table(tmp_path):
    path = write(tmp_path, "engine = 3\n")
    with pytest.raises(SettingsError, match=f"{path}: 'engine' must be a table"):
        read_config_file(path)


def test_toml_syntax_error_names_file(tmp_path):
    path = write(tmp_path, "[engine\nthreads = 2\n")
    with pytest.raises(SettingsError, match=f"{path}: not valid TOML"):
        read_config_file(path)


def test_explicit_config_must_exist(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match=rf"{missing}: config file not found \(--config\)"):
        locate_config(parser().parse_args(["--config", str(missing)]), env={})
    with pytest.raises(SettingsError, match=r"not found \(\$KIMI_LOCAL_CONFIG\)"):
        locate_config(None, env={"KIMI_LOCAL_CONFIG": str(missing)})
    with pytest.raises(SettingsError, match="is a directory"):
        locate_config(parser().parse_args(["--config", str(tmp_path)]), env={})


def test_config_file_from_env_variable_and_flag_wins(tmp_path):
    a = write(tmp_path, "[engine]\nthreads = 1\n", "a.toml")
    b = write(tmp_path, "[engine]\nthreads = 2\n", "b.toml")
    assert resolve_settings(None, env={"KIMI_LOCAL_CONFIG": str(a)}).config.engine.threads == 1
    s = resolve_settings(parser().parse_args(["--config", str(b)]), env={"KIMI_LOCAL_CONFIG": str(a)})
    assert s.config.engine.threads == 2 and s.file.chosen_by == "--config"


def test_default_location_is_read_when_present(tmp_path):
    default = settings.default_config_path()
    default.parent.mkdir(parents=True)
    default.write_text("[tui]\nmax_tokens = 77\n")
    s = resolve_settings(None, env={})
    assert s.config.tui.max_tokens == 77 and s.source("tui.max_tokens") == str(default)


def test_relative_model_path_is_relative_to_the_file(tmp_path):
    (tmp_path / "models" / "k2").mkdir(parents=True)
    path = write(tmp_path, "model = 'models/k2'\n")
    assert read_config_file(path)["model"] == str((tmp_path / "models" / "k2").resolve())


def test_unknown_env_variable_is_an_error_with_suggestion():
    with pytest.raises(SettingsError, match=r"KIMI_LOCAL_CACHE_RAMGB: unknown setting \(did you mean "
                                            r"'KIMI_LOCAL_CACHE_RAM_GB'\?\)"):
        resolve_settings(None, env={"KIMI_LOCAL_CACHE_RAMGB": "3"})


@pytest.mark.parametrize("var,text", [("KIMI_LOCAL_ENGINE_THREADS", "two"), ("KIMI_LOCAL_ENGINE_THREADS", "1.5"),
                                      ("KIMI_LOCAL_CACHE_PREFETCH", "maybe"), ("KIMI_LOCAL_SERVER_PORT", "-4"),
                                      ("KIMI_LOCAL_CACHE_PINNED", "1:2,x")])
def test_bad_env_value_names_variable(var, text):
    with pytest.raises(SettingsError, match=f"environment variable {var}: '"):
        resolve_settings(None, env={var: text})


def test_env_parsing_of_bools_lists_and_empty_strings():
    env = {"KIMI_LOCAL_CACHE_PREFETCH": "Off", "KIMI_LOCAL_CACHE_PINNED": " 1:2 , 3:4 ,",
           "KIMI_LOCAL_SERVER_API_KEY": ""}
    c = resolve_settings(None, env=env).config
    assert c.cache.prefetch is False and c.cache.pinned == ("1:2", "3:4") and c.server.api_key == ""


def test_api_key_alias_and_full_name_precedence():
    assert resolve_settings(None, env={"KIMI_LOCAL_API_KEY": "a"}).config.server.api_key == "a"
    s = resolve_settings(None, env={"KIMI_LOCAL_API_KEY": "a", "KIMI_LOCAL_SERVER_API_KEY": "b"})
    assert s.config.server.api_key == "b" and s.source("server.api_key") == "env KIMI_LOCAL_SERVER_API_KEY"


def test_bad_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["--threads", "-3"])
    assert exit_info.value.code == 2
    assert "argument --threads: 'engine.threads' = -3" in capsys.readouterr().err


def test_pin_flag_repeats_and_splits_and_replaces_the_file(tmp_path):
    path = write(tmp_path, "[cache]\npinned = ['9:9']\n")
    args = parser().parse_args(["--config", str(path), "--pin", "1:2,1:3", "--pin", "2:0"])
    assert resolve_settings(args, env={}).config.cache.pinned == ("1:2", "1:3", "2:0")


def test_flags_only_for_requested_sections():
    p = parser(("engine",))
    assert p.parse_args(["--threads", "2"])
    with pytest.raises(SystemExit):
        p.parse_args(["--port", "80"])
    with pytest.raises(ValueError, match="unknown config section 'gpu'"):
        add_config_flags(argparse.ArgumentParser(), ("gpu",))


def test_exclude_lets_a_command_keep_its_own_flag():
    p = argparse.ArgumentParser()
    p.add_argument("--temperature", type=float, default=0.6)
    add_config_flags(p, ("tui",), exclude=("tui.temperature",))
    args = p.parse_args(["--temperature", "0.2", "--top-p", "0.5"])
    c = resolve_settings(args, env={}).config
    assert c.tui.top_p == 0.5 and c.tui.temperature == 0.6  # the command's own flag is not a config override


def test_gpu_tier_must_fit_the_gpu_budget(tmp_path):
    path = write(tmp_path, "[engine]\ngpu_memory_gb = 10\n")
    args = parser().parse_args(["--config", str(path), "--gpu-cache-gb", "12"])
    with pytest.raises(SettingsError, match=rf"'cache.gpu_gb' = 12 \(flag --gpu-cache-gb\) must fit in "
                                            rf"'engine.gpu_memory_gb' = 10 \({path}\)"):
        resolve_settings(args, env={})


def test_load_settings_checks_the_model_directory(tmp_path):
    path = write(tmp_path, f"model = '{tmp_path / 'missing'}'\n")
    args = parser().parse_args(["--config", str(path)])
    assert resolve_settings(args, env={}).config.model  # show/init do not need it to exist
    with pytest.raises(SettingsError, match=rf"{path}: model = '.*missing': no such checkpoint directory"):
        load_settings(args)
    args = parser().parse_args(["--config", str(path), "--model", str(tmp_path)])
    assert load_settings(args).model == str(tmp_path)
