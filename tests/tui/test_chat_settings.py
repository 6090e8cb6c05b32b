"""Chat settings: defaults from the [tui] config section, validation naming the field, sampling parameters."""

from __future__ import annotations

import pytest

from kimi_local.config import TuiSection
from kimi_local.tui.chat_settings import ChatSettings


def test_from_config_and_sampling_params():
    s = ChatSettings.from_config(TuiSection(system_prompt="Hi", temperature=0.0, top_p=0.5, max_tokens=9))
    p = s.sampling_params(stop_ids=frozenset({3}))
    assert (p.temperature, p.top_p, p.max_new_tokens, p.stop_ids) == (0.0, 0.5, 9, frozenset({3}))
    assert p.is_greedy
    assert ChatSettings.from_dict(s.to_dict()) == s
    assert ChatSettings.from_dict({}) == ChatSettings()


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.1, "temperature"), ("temperature", 2.5, "temperature"), ("temperature", float("nan"), "temperature"),
    ("top_p", 0.0, "top_p"), ("top_p", 1.5, "top_p"), ("max_tokens", 0, "max_tokens"), ("max_tokens", 1.5, "max_tokens"),
    ("temperature", "hot", "temperature"), ("system_prompt", 3, "system_prompt"), ("max_tokens", True, "max_tokens"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ChatSettings(**{field: value})
