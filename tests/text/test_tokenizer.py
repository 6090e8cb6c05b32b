"""KimiTokenizer: loading and its errors, ids of the special tokens, round trips, and tiktoken's ids against a
pure-Python reference BPE (regex V1 split + lowest-rank-first merging)."""

from __future__ import annotations

import base64
import json
import random
import shutil

import pytest

from kimi_local.text.files import CONFIG_FILE, RANKS_FILE, read_ranks_file
from kimi_local.text.special_tokens import KIMI_SPECIAL_TOKENS, SpecialTokens
from kimi_local.text.split_pattern import compile_reference_pattern
from kimi_local.text.tokenizer import KimiTokenizer
from tests.text.conftest import VARIED_TEXTS


def reference_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """Byte-level BPE as tiktoken defines it: in each chunk, merge the adjacent pair whose concatenation has
    the lowest rank, until no adjacent pair is a token."""
    ids = []
    for chunk in compile_reference_pattern().findall(text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], float("inf")))
            if parts[best] + parts[best + 1] not in ranks:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def random_text(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x400, 0x4FF), (0x4E00, 0x4FFF), (0x3040, 0x30FF),
              (0xAC00, 0xAC80), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0x10000, 0x1007F)]
    out = []
    for _ in range(n):
        if rng.random() < 0.15:
            out.append(rng.choice([" ", "  ", "\n", "\t", "\r\n", "'s", "'LL"]))
        else:
            lo, hi = rng.choice(ranges)
            out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def test_sizes_and_special_ids(tiny_tok):
    assert tiny_tok.vocab_size == 1024
    assert tiny_tok.num_base_tokens == 768
    for offset, name, _ in KIMI_SPECIAL_TOKENS:
        assert tiny_tok.token_id(name) == 768 + offset
    assert tiny_tok.token_id("<|reserved_token_773|>") == 773
    assert tiny_tok.stop_ids == (tiny_tok.token_id("<|im_end|>"), tiny_tok.token_id("[EOS]"))
    assert tiny_tok.bos_id == 768 and tiny_tok.eos_id == 769
    with pytest.raises(KeyError, match="not a special token"):
        tiny_tok.token_id("<|nope|>")


def test_kimi_k2_ids(kimi_size_dir):
    # KIMI_FACTS section 4: the special ids of the real Kimi-K2 vocabulary.
    tok = KimiTokenizer.from_dir(kimi_size_dir)
    assert tok.vocab_size == 163840 and tok.num_base_tokens == 163584
    expected = {"[BOS]": 163584, "[EOS]": 163585, "<|im_end|>": 163586, "<|im_user|>": 163587,
                "<|im_assistant|>": 163588, "<|im_system|>": 163594, "<|tool_calls_section_begin|>": 163595,
                "<|tool_calls_section_end|>": 163596, "<|tool_call_begin|>": 163597,
                "<|tool_call_argument_begin|>": 163598, "<|tool_call_end|>": 163599, "<|im_middle|>": 163601,
                "[UNK]": 163838, "[PAD]": 163839}
    assert {name: tok.token_id(name) for name in expected} == expected
    assert tok.stop_ids == (163586, 163585)
    assert not tok.is_special(163597) and tok.is_special(163586) and tok.is_control(163597)


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_round_trip(demo_tok, tiny_tok, text):
    for tok in (demo_tok, tiny_tok):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(not tok.is_control(i) for i in ids)


def test_random_unicode_round_trip(demo_tok):
    rng = random.Random(0)
    for _ in range(200):
        text = random_text(rng, rng.randint(0, 60))
        assert demo_tok.decode(demo_tok.encode(text)) == text


def test_matches_reference_bpe(demo_dir, demo_tok):
    ranks = read_ranks_file(demo_dir / RANKS_FILE)
    rng = random.Random(2)
    texts = VARIED_TEXTS[:-1] + [random_text(rng, 40) for _ in range(30)]
    texts.append("The weather in Beijing today is sunny. def main():\n    return 0\n你好世界")
    for text in texts:
        assert demo_tok.encode(text) == reference_encode(text, ranks), repr(text)


def test_common_words_are_single_tokens(demo_tok):
    for word in [" the", " weather", " function", " return", "你好"]:
        assert len(demo_tok.encode(word)) == 1, word
    assert len(demo_tok.encode("The weather in Beijing today is sunny.")) < 12


def test_special_text_is_plain_unless_allowed(demo_tok):
    im_end = demo_tok.token_id("<|im_end|>")
    call = demo_tok.token_id("<|tool_call_begin|>")
    text = "a<|im_end|>b<|tool_call_begin|>c"
    plain = demo_tok.encode(text)
    assert im_end not in plain and call not in plain
    allowed = demo_tok.encode(text, allow_special=True)
    assert allowed == demo_tok.encode("a") + [im_end] + demo_tok.encode("b") + [call] + demo_tok.encode("c")
    assert demo_tok.decode(plain) == demo_tok.decode(allowed) == text


def test_decode_skip_special_keeps_tool_markers(demo_tok):
    ids = demo_tok.encode("<|tool_calls_section_begin|>x<|im_end|>[EOS]", allow_special=True)
    assert demo_tok.decode(ids, skip_special=True) == "<|tool_calls_section_begin|>x"
    assert demo_tok.decode(ids) == "<|tool_calls_section_begin|>x<|im_end|>[EOS]"


def test_decode_rejects_ids_outside_vocab(tiny_tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_tok.decode([1, 1024])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_tok.decode([-1])
    with pytest.raises(TypeError):
        tiny_tok.encode(b"bytes")


def test_invalid_utf8_decodes_with_replacement(tiny_tok):
    # Byte tokens 0xE4 0xBD (2 of the 3 bytes of 你) then 'a'.
    assert tiny_tok.decode([0xE4, 0xBD, ord("a")]) == "\ufffda"


# -- loading errors ---------------------------------------------------------------------------------------


@pytest.fixture
def broken_dir(tiny_dir, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, path)
    return path


def test_missing_files_are_named(broken_dir):
    (broken_dir / RANKS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="tiktoken.model"):
        KimiTokenizer.from_dir(broken_dir)


def test_missing_config_is_named(broken_dir):
    (broken_dir / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        KimiTokenizer.from_dir(broken_dir)
    with pytest.raises(FileNotFoundError, match="not found"):
        KimiTokenizer.from_dir(broken_dir / "nope")


@pytest.mark.parametrize(
    "line, message",
    [
        ("not-base64!! 5", "bad base64"),
        ("QQ== x", "bad base64"),
        ("QQ==", "expected 'base64-token rank'"),
    ],
)
def test_malformed_ranks_line_is_named(broken_dir, line, message):
    path = broken_dir / RANKS_FILE
    lines = path.read_text().splitlines()
    lines[5] = line
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"tiktoken.model:6: {message}"):
        KimiTokenizer.from_dir(broken_dir)


def test_ranks_must_be_contiguous_and_cover_bytes(broken_dir):
    path = broken_dir / RANKS_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1] + [lines[-1].split()[0] + " 99999"]))
    with pytest.raises(ValueError, match="ranks must be exactly"):
        KimiTokenizer.from_dir(broken_dir)
    token = base64.b64encode(b"\x07").decode()
    path.write_text("\n".join(line for line in lines if not line.startswith(token + " ")))
    with pytest.raises(ValueError, match="single bytes"):
        KimiTokenizer.from_dir(broken_dir)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["added_tokens_decoder"].update({"5": {"content": "<|x|>"}}), "outside the special range"),
        (lambda c: c["added_tokens_decoder"].update({"abc": {"content": "<|x|>"}}), "is not a token id"),
        (lambda c: c["added_tokens_decoder"].update({"800": {"special": True}}), "non-empty string 'content'"),
        (lambda c: c["added_tokens_decoder"].update({"800": {"content": "[EOS]"}}), "not unique"),
        (lambda c: c.update(eos_token="<|nope|>"), "eos_token"),
        (lambda c: c.update(added_tokens_decoder=[]), "must be an object"),
    ],
)
def test_malformed_config_is_named(broken_dir, edit, message):
    path = broken_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as info:
        KimiTokenizer.from_dir(broken_dir)
    assert "tokenizer_config.json" in str(info.value)


def test_config_not_json_is_named(broken_dir):
    (broken_dir / CONFIG_FILE).write_text("{nope")
    with pytest.raises(ValueError, match="tokenizer_config.json: not a readable JSON"):
        KimiTokenizer.from_dir(broken_dir)


def test_hf_added_token_objects_for_roles(broken_dir):
    path = broken_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    config["eos_token"] = {"content": "<|im_end|>", "special": True}
    path.write_text(json.dumps(config))
    tok = KimiTokenizer.from_dir(broken_dir)
    assert tok.eos_id == tok.token_id("<|im_end|>")
    assert tok.stop_ids == (tok.token_id("<|im_end|>"), tok.token_id("[EOS]"))
    config["eos_token"] = "[EOT]"
    path.write_text(json.dumps(config))
    assert KimiTokenizer.from_dir(broken_dir).stop_ids == (tok.token_id("<|im_end|>"), tok.token_id("[EOS]"),
                                                          tok.token_id("[EOT]"))


def test_special_table_round_trips_through_config():
    table = SpecialTokens.from_offsets(163584)
    again = SpecialTokens.from_added_tokens_decoder(table.to_added_tokens_decoder(), 163584, "x")
    assert again == table
