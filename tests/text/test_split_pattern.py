"""Kimi's split pattern: tiktoken (Rust) against the `regex` V1 reference, and the long-run cuts against a
direct port of the loop in Kimi's tokenization_kimi.py."""

from __future__ import annotations

import random

import pytest
import regex
import tiktoken

from kimi_local.text.split_pattern import (
    MAX_ENCODE_CHARS,
    MAX_RUN_CHARS,
    PAT_STR,
    reference_split,
    split_long_runs,
)
from tests.text.conftest import VARIED_TEXTS

TRICKY = [
    "Hello world, I'M here's 12345 你好世界abc  \n\n  x",
    "ÀÉÎõü naïve café e\u0301 ĲǅǄ ǈǋ",
    "HELLO'S Don'T 中文English混合123456789",
    "  \t\n  def f(x):\n    return x**2  \r\n",
    "a\u0301\u0302b\u0303 \u0300x",  # marks (\p{M}) join letter chunks, even a leading one
    "ǅungla ǈubljana",  # titlecase letters (\p{Lt})
    "ʰʲ ˢᵘᵖ ʻokina",  # modifier letters (\p{Lm})
    "漢字かなカナ한글",  # Han vs other \p{Lo}
    "1234567 ١٢٣٤٥ ⅷ ½",
    "!!! ??? ... ---\n\n\n--- ,,,",
    "x  \n  y   \r\n\r\n z",
    "it's IT'S It'S 'tis",
    "😀😀 👍🏽👍🏽",
]


def tiktoken_chunks(text: str) -> list[str]:
    """tiktoken's chunking, made visible: with every substring of `text` in the vocabulary (ranked by length),
    BPE merges each chunk into exactly one token, so the tokens are the chunks."""
    data = text.encode("utf-8")
    subs = sorted({data[i:j] for i in range(len(data)) for j in range(i + 2, len(data) + 1)}, key=lambda s: (len(s), s))
    ranks = {bytes([b]): b for b in range(256)}
    for s in subs:
        ranks.setdefault(s, len(ranks))
    enc = tiktoken.Encoding("chunks", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    return [enc.decode_single_token_bytes(t).decode("utf-8") for t in enc.encode_ordinary(text)]


@pytest.mark.parametrize("text", TRICKY + [t for t in VARIED_TEXTS if 0 < len(t) < 200])
def test_tiktoken_splits_like_regex_v1(text):
    assert tiktoken_chunks(text) == reference_split(text)


def test_random_strings_split_alike():
    rng = random.Random(1)
    alphabet = "aZé中ア한😀1٣ \t\n\r'!,.-_\u0301Ǆ"
    for _ in range(40):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tiktoken_chunks(text) == reference_split(text), repr(text)


def test_reference_split_is_lossless():
    for text in VARIED_TEXTS:
        assert "".join(reference_split(text)) == text


def test_v0_regex_mode_would_be_wrong():
    # Why the reference needs regex.V1: in V0 `&&` is not intersection and words are lost.
    v0 = regex.compile(PAT_STR)
    assert "".join(v0.findall("Hello world")) != "Hello world"
    assert reference_split("Hello world") == ["Hello", " world"]


def kimi_split_loop(s: str, max_len: int):
    """Direct port of the loop Kimi's encode uses (from Llama 3's tokenizer)."""
    current_len = 0
    current_is_space = s[0].isspace() if s else False
    start = 0
    for i in range(len(s)):
        is_space = s[i].isspace()
        if current_is_space ^ is_space:
            current_len = 1
            current_is_space = is_space
        else:
            current_len += 1
            if current_len > max_len:
                yield s[start:i]
                start = i
                current_len = 1
    yield s[start:]


def kimi_pieces(text: str) -> list[str]:
    return [
        piece
        for i in range(0, len(text), MAX_ENCODE_CHARS)
        for piece in kimi_split_loop(text[i : i + MAX_ENCODE_CHARS], MAX_RUN_CHARS)
    ]


@pytest.mark.parametrize(
    "text",
    [
        "short text",
        "",
        "x" * MAX_RUN_CHARS,
        "x" * (MAX_RUN_CHARS + 1),
        "ab " + "x" * (3 * MAX_RUN_CHARS + 7) + " tail",
        " " * (2 * MAX_RUN_CHARS) + "y" + "\n" * (MAX_RUN_CHARS + 3),
        ("word " * 90_000) + "z" * (MAX_RUN_CHARS + 10),  # crosses the 400k window
        "q" * (MAX_ENCODE_CHARS + 5),
    ],
)
def test_long_run_cuts_match_kimi(text):
    assert list(split_long_runs(text)) == kimi_pieces(text)
