"""The stop-string matcher against the obvious reference: scan the full text and cut at the first stop string
to complete (smallest end; among equal ends the longest)."""

from __future__ import annotations

import random

import pytest

from kimi_local.text.stop_strings import StopStringMatcher


def reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    for end in range(1, len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            stop = max(done, key=len)
            return text[: end - len(stop)], stop
    return text, None


def run(pieces: list[str], stops: list[str]) -> tuple[str, str | None, list[str]]:
    matcher = StopStringMatcher(stops)
    released = []
    for piece in pieces:
        match = matcher.feed(piece)
        released.append(match.text)
        if match.matched:
            return "".join(released), match.matched, released
    released.append(matcher.flush())
    return "".join(released), None, released


def test_split_stop_string_is_held_back_then_cut():
    out, stop, released = run(["Hello E", "N", "D world"], ["END"])
    assert (out, stop) == ("Hello ", "END")
    assert released[0] == "Hello "  # "E" was held back, never sent


def test_false_alarm_is_released():
    out, stop, released = run(["abc E", "NX", "Y"], ["END"])
    assert (out, stop) == ("abc ENXY", None)
    assert released[:2] == ["abc ", "ENX"]


def test_first_completed_match_wins_among_several():
    assert run(["xx bb aa"], ["aa", "bb"])[:2] == ("xx ", "bb")
    assert run(["abcd"], ["abcd", "bc"])[:2] == ("a", "bc")  # "bc" completes before "abcd" does
    assert run(["ab", "cd"], ["abcd", "bc"])[:2] == ("a", "bc")


def test_no_stops_passes_everything_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("abc").text == "abc" and matcher.flush() == ""


def test_rejects_empty_stop_string():
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])


def test_random_texts_and_splits_match_reference():
    rng = random.Random(0)
    alphabet = "ab c\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        out, stop, released = run(pieces, stops)
        assert (out, stop) == reference(text, stops), (text, stops, pieces)
        # A released prefix never ends in the middle of a stop string that later completes.
        sent = ""
        for piece in released:
            sent += piece
            assert reference(sent, stops)[1] is None
