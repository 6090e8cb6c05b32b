"""Streaming decode: pieces concatenate to the full decode, no character is ever emitted half-way, and text
is released as soon as its last byte arrives."""

from __future__ import annotations

import random

import pytest

from tests.text.conftest import VARIED_TEXTS


def longest_valid_prefix(data: bytes) -> str:
    """Decode of the longest prefix that is complete UTF-8 (an incomplete tail is at most 3 bytes)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise AssertionError("more than 3 invalid trailing bytes")


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_pieces_are_whole_characters_and_prompt(tiny_tok, text):
    # The 1024-vocab tokenizer splits most non-ASCII characters over several byte tokens.
    ids = tiny_tok.encode(text)
    decoder = tiny_tok.incremental_decoder()
    emitted, data = "", b""
    for token_id in ids:
        piece = decoder.feed(token_id)
        assert "\ufffd" not in piece
        emitted += piece
        data += tiny_tok.token_bytes(token_id)
        assert emitted == longest_valid_prefix(data)
    assert not decoder.has_pending_bytes
    emitted += decoder.flush()
    assert emitted == text == tiny_tok.decode(ids)


def test_multibyte_split_is_held_back(tiny_tok):
    ids = tiny_tok.encode("😀")
    assert len(ids) > 1, "the test needs an emoji split over several tokens"
    decoder = tiny_tok.incremental_decoder()
    assert [decoder.feed(i) for i in ids] == [""] * (len(ids) - 1) + ["😀"]


def test_random_ids_equal_full_decode(tiny_tok):
    # Arbitrary id sequences, including invalid UTF-8 and special tokens between partial characters.
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(tiny_tok.vocab_size) if rng.random() < 0.3 else rng.randrange(0x80, 0x100)
               for _ in range(rng.randint(0, 20))]
        for skip in (False, True):
            decoder = tiny_tok.incremental_decoder(skip_special=skip)
            text = decoder.feed_many(ids) + decoder.flush()
            assert text == tiny_tok.decode(ids, skip_special=skip), ids


def test_flush_ends_a_dangling_character_and_resets(tiny_tok):
    decoder = tiny_tok.incremental_decoder()
    assert decoder.feed(0xE4) == ""
    assert decoder.has_pending_bytes
    assert decoder.flush() == "\ufffd"
    assert decoder.feed_many(tiny_tok.encode("ok")) == "ok"
    assert decoder.flush() == ""


def test_special_tokens_stream_as_text_or_skip(tiny_tok):
    ids = tiny_tok.encode("hi<|tool_call_begin|><|im_end|>", allow_special=True)
    assert tiny_tok.incremental_decoder().feed_many(ids) == "hi<|tool_call_begin|><|im_end|>"
    assert tiny_tok.incremental_decoder(skip_special=True).feed_many(ids) == "hi<|tool_call_begin|>"
