"""The config schema: every field's rule rejects bad values with an error naming the key."""

from __future__ import annotations

import dataclasses

import pytest

from kimi_local.config import (SECTIONS, SPECS, CacheSection, Config, EngineSection, ServerSection,
                               SettingValueError, TuiSection, build_config, parse_pinned)


def test_defaults_pass_their_own_rules():
    config = Config()
    for key, spec in SPECS.items():
        assert spec.check(config.get(key)) == spec.default


def test_every_field_has_help_and_every_section_field_a_flag():
    flags = [spec.rule.flag for spec in SPECS.values()]
    assert len(flags) == len(set(flags)), "two settings share a flag"
    for key, spec in SPECS.items():
        assert spec.rule.help and spec.rule.flag and spec.rule.flag.startswith("--"), key
    assert set(SECTIONS) == {"engine", "cache", "server", "tui"}
    assert [f.name for f in dataclasses.fields(Config)] == ["model", *SECTIONS]


BAD_VALUES = [
    ("engine.device", "gpu"), ("engine.device", "cuda:x"), ("engine.device", 1),
    ("engine.dtype", "fp8"), ("engine.threads", -1), ("engine.threads", 2.5), ("engine.threads", True),
    ("engine.threads", "4"), ("engine.max_context", 0), ("engine.max_batch", 0), ("engine.prefill_chunk", -5),
    ("engine.gpu_memory_gb", -1.0), ("engine.gpu_memory_gb", float("nan")), ("engine.gpu_memory_gb", float("inf")),
    ("engine.expert_backend", "cuda"), ("engine.cuda_graphs", "yes"), ("engine.cuda_graphs", 1),
    ("cache.ram_gb", -0.5), ("cache.ram_gb", "64"), ("cache.gpu_gb", -1), ("cache.pinned", "1:2"),
    ("cache.pinned", ["1:2", "3"]), ("cache.pinned", ["a:b"]), ("cache.pinned", [1]), ("cache.prefetch", 1),
    ("cache.prefetch", "yes"), ("cache.io_threads", 0), ("cache.profile", None),
    ("server.host", ""), ("server.host", "  "), ("server.port", 70000), ("server.port", -1), ("server.api_key", 5),
    ("server.max_queue", 0),
    ("tui.system_prompt", None), ("tui.temperature", -0.1), ("tui.temperature", 2.5), ("tui.top_p", 0),
    ("tui.top_p", 1.5), ("tui.max_tokens", 0),
    ("model", 3),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_bad_value_names_the_key(key, value):
    with pytest.raises(SettingValueError, match=f"'{key}'"):
        SPECS[key].check(value)
    with pytest.raises(SettingValueError, match=f"'{key}'"):
        build_config({key: value})


def test_every_setting_has_a_bad_value_case():
    covered = {key for key, _ in BAD_VALUES}
    assert covered == set(SPECS)


def test_direct_construction_is_validated_too():
    with pytest.raises(SettingValueError, match="'engine.threads' = -2"):
        EngineSection(threads=-2)
    with pytest.raises(SettingValueError, match="'server.port'"):
        ServerSection(port=99999)
    with pytest.raises(SettingValueError, match="'tui.top_p'"):
        TuiSection(top_p=0.0)


def test_values_are_normalized():
    cache = CacheSection(ram_gb=64, pinned=["1:2", "3:4"])
    assert cache.ram_gb == 64.0 and isinstance(cache.ram_gb, float)
    assert cache.pinned == ("1:2", "3:4")
    assert hash(cache)  # still hashable after the list became a tuple


def test_good_edge_values_are_accepted():
    config = build_config({"engine.device": "cuda:1", "server.port": 0, "tui.temperature": 0, "tui.top_p": 1,
                           "engine.threads": 0, "cache.pinned": []})
    assert config.engine.device == "cuda:1" and config.server.port == 0 and config.tui.temperature == 0.0


def test_build_config_rejects_unknown_keys():
    with pytest.raises(SettingValueError, match="unknown setting 'engine.thread'"):
        build_config({"engine.thread": 2})


def test_get_unknown_key():
    with pytest.raises(KeyError, match="engine.nope"):
        Config().get("engine.nope")


def test_parse_pinned_keeps_order_and_drops_duplicates():
    assert parse_pinned(("3:17", "1:0", "3:17")) == [(3, 17), (1, 0)]


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().engine.threads = 3  # type: ignore[misc]
