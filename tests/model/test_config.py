import json

import pytest

from kimi_local.model.config import ConfigError, ModelConfig
from kimi_local.model.presets import KIMI_K2_CONFIG

KIMI_JSON = "../shared/kimi_k2_instruct_config.json"


def test_real_kimi_config_loads_with_its_derived_constants(request):
    path = request.config.rootpath.parent / "shared" / "kimi_k2_instruct_config.json"
    raw = json.loads(path.read_text()) if path.exists() else KIMI_K2_CONFIG
    c = ModelConfig.from_dict(raw)
    assert c.model_type == "kimi_k2"
    assert c.moe_layer_ids == list(range(1, 61))
    assert c.qk_head_dim == 192
    assert c.softmax_scale == pytest.approx(0.1308608, abs=1e-7)


def test_deepseek_v3_model_type_is_accepted():
    assert ModelConfig.from_dict({**KIMI_K2_CONFIG, "model_type": "deepseek_v3"}).model_type == "deepseek_v3"


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("model_type", "llama", "unsupported"),
        ("hidden_size", 0, "positive integer"),
        ("hidden_size", "7168", "positive integer"),
        ("scoring_func", "softmax", "sigmoid"),
        ("topk_method", "greedy", "noaux_tc"),
        ("hidden_act", "gelu", "silu"),
        ("moe_layer_freq", 2, "only 1"),
        ("n_group", 5, "must divide"),
        ("topk_group", 2, "<= n_group"),
        ("qk_rope_head_dim", 63, "even"),
        ("first_k_dense_replace", 99, "between"),
        ("attention_bias", True, "not supported"),
        ("rope_scaling", {"type": "linear", "factor": 2.0}, "YaRN"),
        ("quantization_config", None, "block-fp8"),
        ("quantization_config", {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [64, 64]}, "128"),
        ("q_lora_rank", -1, "positive integer or null"),
    ],
)
def test_unsupported_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=rf"field '{field}'.*{message}"):
        ModelConfig.from_dict({**KIMI_K2_CONFIG, field: value}, source="x/config.json")


def test_missing_required_field_and_bad_file(tmp_path):
    raw = dict(KIMI_K2_CONFIG)
    del raw["kv_lora_rank"]
    with pytest.raises(ConfigError, match="missing required field 'kv_lora_rank'"):
        ModelConfig.from_dict(raw)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        ModelConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_file(tmp_path / "nowhere")


def test_unknown_keys_are_kept_but_do_not_change_the_model():
    c = ModelConfig.from_dict({**KIMI_K2_CONFIG, "some_future_key": 1})
    assert c.extra["some_future_key"] == 1
    assert c.to_dict()["some_future_key"] == 1
