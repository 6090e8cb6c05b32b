"""The demo tokenizer files: Kimi's format, exact sizes, determinism, and the BPE trainer against its
slow reference."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kimi_local.text.bpe_train import train_bpe, train_bpe_reference
from kimi_local.text.demo_corpus import demo_corpus
from kimi_local.text.demo_tokenizer import demo_ranks, write_demo_tokenizer
from kimi_local.text.files import CONFIG_FILE, RANKS_FILE, TEMPLATE_FILE, builtin_template_text, read_ranks_file
from kimi_local.text.special_tokens import KIMI_SPECIAL_TOKENS
from kimi_local.text.split_pattern import reference_split
from kimi_local.text.tokenizer import KimiTokenizer


@pytest.mark.parametrize("vocab_size", [512, 1000, 20000])
def test_sizes(tmp_path, vocab_size):
    # 512: no merges at all; 1000: not a round number; 20000: more ranks than the sample has merges (filler).
    write_demo_tokenizer(tmp_path, vocab_size)
    ranks = read_ranks_file(tmp_path / RANKS_FILE)
    assert len(ranks) == vocab_size - 256
    tok = KimiTokenizer.from_dir(tmp_path)
    assert tok.vocab_size == vocab_size
    text = "Round trip 你好 😀 at any size"
    assert tok.decode(tok.encode(text)) == text


def test_files_have_kimis_structure(tiny_dir):
    config = json.loads((tiny_dir / CONFIG_FILE).read_text())
    decoder = config["added_tokens_decoder"]
    for offset, name, special in KIMI_SPECIAL_TOKENS:
        entry = decoder[str(768 + offset)]
        assert entry["content"] == name and entry["special"] is special
        assert set(entry) == {"content", "lstrip", "normalized", "rstrip", "single_word", "special"}
    assert decoder["779"]["special"] is False  # <|tool_calls_section_begin|>
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == \
        ("[BOS]", "[EOS]", "[PAD]", "[UNK]")
    assert "<|im_end|>" in config["additional_special_tokens"]
    assert "chat_template" not in config
    assert (tiny_dir / TEMPLATE_FILE).read_text() == builtin_template_text()
    assert len((tiny_dir / RANKS_FILE).read_text().splitlines()) == 768


def test_deterministic(tmp_path, tiny_dir):
    write_demo_tokenizer(tmp_path, 1024)
    for name in (RANKS_FILE, CONFIG_FILE, TEMPLATE_FILE):
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes()


def test_sizes_share_a_prefix():
    # Merges are learned in one order, so a smaller vocabulary is a prefix of a larger one.
    assert demo_ranks(1024)[:344] == demo_ranks(600)


@pytest.mark.parametrize("vocab_size", [511, 0, 1024.0, True, "1024"])
def test_bad_vocab_size(tmp_path, vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        write_demo_tokenizer(tmp_path, vocab_size)


def test_fast_trainer_matches_reference():
    chunks = Counter(chunk.encode("utf-8") for chunk in reference_split(demo_corpus(seed=3, num_sentences=150)))
    assert train_bpe(chunks, 300) == train_bpe_reference(chunks, 300)
    # Exhaustion: both stop once every chunk is one token (abab: 2 merges, the 6 bytes of 你好: 5).
    few = Counter({b"abab": 3, b"ab": 1, "你好".encode(): 2})
    merges = train_bpe(few, 100)
    assert merges == train_bpe_reference(few, 100)
    assert len(merges) == 7 and merges[:2] == [b"ab", b"abab"] and merges[-1] == "你好".encode()


def test_corpus_is_deterministic():
    assert demo_corpus() == demo_corpus()
    assert demo_corpus(seed=1) != demo_corpus()
