"""Reply speed as seen by the app: time to first token, prompt and generation tokens per second."""

from __future__ import annotations

import pytest

from kimi_local.tui.backend import ReplyChunk
from kimi_local.tui.reply_meter import ReplyMeter


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_meter_figures():
    clock = Clock()
    meter = ReplyMeter(clock)
    assert meter.time_to_first_token is None and meter.generation_tokens_per_second is None
    meter.observe(ReplyChunk(prompt_tokens=50))
    assert meter.context_tokens == 50
    clock.now = 100.5
    meter.observe(ReplyChunk("a", 1))
    assert meter.time_to_first_token == pytest.approx(0.5)
    assert meter.prompt_tokens_per_second == pytest.approx(100.0)
    assert meter.generation_tokens_per_second is None  # needs two tokens
    for i in range(1, 11):
        clock.now = 100.5 + 0.1 * i
        meter.observe(ReplyChunk("b", 1))
    assert meter.generation_tokens_per_second == pytest.approx(10.0)
    assert meter.context_tokens == 61
    clock.now = 200.0  # waiting after the last token does not lower the rate
    meter.observe(ReplyChunk(finish_reason="length", prompt_tokens=50, completion_tokens=11))
    assert meter.generation_tokens_per_second == pytest.approx(10.0)
    assert meter.finish_reason == "length" and meter.context_tokens == 61


def test_the_backends_token_count_wins():
    """A remote server's chunks need not be one token each; its usage count is the truth."""
    clock = Clock()
    meter = ReplyMeter(clock)
    for i in range(3):
        clock.now += 1.0
        meter.observe(ReplyChunk("several tokens", 1))
    meter.observe(ReplyChunk(finish_reason="stop", prompt_tokens=5, completion_tokens=9))
    assert meter.generated_tokens == 9 and meter.context_tokens == 14
    assert meter.generation_tokens_per_second == pytest.approx(8 / 2.0)


@pytest.mark.parametrize("prompt,cached,rate", [(1000, 950, 100.0), (8, 8, None)])
def test_reused_prompt_tokens_do_not_count_towards_the_prefill_rate(prompt, cached, rate):
    clock = Clock()
    meter = ReplyMeter(clock)
    meter.observe(ReplyChunk(prompt_tokens=prompt))
    clock.now = 100.5
    meter.observe(ReplyChunk("a", 1, cached_prompt_tokens=cached))
    # computed tokens over the time to the first token; none computed: no rate
    assert meter.prompt_tokens_per_second == (None if rate is None else pytest.approx(rate))
    assert meter.context_tokens == prompt + 1
