"""Engine outputs -> text for one choice: stop tokens hidden, UTF-8 never split, stop strings cut with
holdback."""

from __future__ import annotations

import pytest

from kimi_local.engine.engine import StepOutput
from kimi_local.text.choice_text import ChoiceText
from kimi_local.text.tokenizer import KimiTokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return KimiTokenizer.from_dir(tiny_checkpoint)


def feed_all(text: ChoiceText, ids: list[int], last_reason: str = "length"):
    events = []
    for i, token in enumerate(ids):
        reason = last_reason if i == len(ids) - 1 else None
        events.append(text.feed(StepOutput(1, token, None, reason)))
        if events[-1].is_final:
            break
    return events


def test_pieces_concatenate_to_the_decoded_text(tokenizer):
    ids = tokenizer.encode("Grüße aus 北京, café ☕!")
    events = feed_all(ChoiceText(0, tokenizer, frozenset(tokenizer.stop_ids), []), ids)
    assert "".join(e.text for e in events) == tokenizer.decode(ids)
    assert all("\ufffd" not in e.text for e in events)
    assert events[-1].finish_reason == "length" and [e.is_final for e in events].count(True) == 1


def test_stop_token_is_counted_but_not_shown(tokenizer):
    end = tokenizer.token_id("<|im_end|>")
    text = ChoiceText(0, tokenizer, frozenset(tokenizer.stop_ids), [])
    events = feed_all(text, tokenizer.encode("Hi there") + [end], last_reason="stop")
    assert "".join(e.text for e in events) == "Hi there"
    assert text.num_tokens == len(tokenizer.encode("Hi there")) + 1
    assert all(t.token_id != end for e in events for t in e.tokens)


def test_stop_string_cuts_and_reports(tokenizer):
    text = ChoiceText(0, tokenizer, frozenset(tokenizer.stop_ids), ["lazy"])
    events = feed_all(text, tokenizer.encode("The quick brown fox jumps over the lazy dog"))
    assert "".join(e.text for e in events) == "The quick brown fox jumps over the "
    assert (events[-1].finish_reason, events[-1].stop_string) == ("stop", "lazy")
    assert text.feed(StepOutput(1, 5, None, None)).text == ""  # nothing after the end


def test_held_back_text_is_released_at_the_end(tokenizer):
    text = ChoiceText(0, tokenizer, frozenset(), ["dogs"])
    events = feed_all(text, tokenizer.encode("the dog"))
    assert "".join(e.text for e in events) == "the dog" and events[-1].finish_reason == "length"


def test_engine_error_is_passed_on(tokenizer):
    text = ChoiceText(0, tokenizer, frozenset(), [])
    event = text.feed(StepOutput(1, None, None, "error", "RuntimeError: boom"))
    assert (event.finish_reason, event.error) == ("error", "RuntimeError: boom")
