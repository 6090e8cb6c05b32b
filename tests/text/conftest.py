"""Demo tokenizers written once per session: the tiny size (1024), the demo size (8192), and the real Kimi-K2
size (163,840: same special ids as Kimi-K2, filler ranks)."""

from __future__ import annotations

import pytest

from kimi_local.text.demo_tokenizer import write_demo_tokenizer
from kimi_local.text.tokenizer import KimiTokenizer


def _write(tmp_path_factory, vocab_size: int):
    path = tmp_path_factory.mktemp(f"tok{vocab_size}")
    write_demo_tokenizer(path, vocab_size)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return _write(tmp_path_factory, 1024)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return _write(tmp_path_factory, 8192)


@pytest.fixture(scope="session")
def kimi_size_dir(tmp_path_factory):
    return _write(tmp_path_factory, 163840)


@pytest.fixture(scope="session")
def tiny_tok(tiny_dir):
    return KimiTokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="session")
def demo_tok(demo_dir):
    return KimiTokenizer.from_dir(demo_dir)


@pytest.fixture(scope="session")
def chat(demo_dir, demo_tok):
    from kimi_local.text.chat import ChatFormat

    return ChatFormat.from_dir(demo_dir, demo_tok)


# Text that exercises the split pattern and multi-byte UTF-8: CJK, emoji (ZWJ sequences, skin tones, flags),
# combining marks, RTL scripts, whitespace runs, contractions, digits, code.
VARIED_TEXTS = [
    "",
    "Hello, world!",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand\r\rCRs\n\n\n",
    "     \n\n     \t\t   ",
    "I'm sure they'll say it's fine; WE'RE not, DON'T.",
    "你好，世界！今天北京的天气很好。中文English混合123456789",
    "日本語のテキストとカタカナ、한국어 텍스트",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣ ❤️",
    "combining: e\u0301 a\u0308\u0304 Z\u0335\u0327\u0301 \u0915\u094d\u0937 ก\u0e34\u0e4a",
    "Ελληνικά Русский العربية עברית हिन्दी",
    "def f(x):\n    return {'a': [1, 2.5e-3, None]}  # comment\n",
    "math: ∑ᵢ xᵢ² ≤ ∞ → ≠ ± ½ ⅞ ⁴²",
    "zero-width: a\u200bb\u200cc\u200dd\ufeffe",
    "<|im_end|> [EOS] <|tool_call_begin|> look like markers but are text",
    "\u00a0non-breaking\u2003em-space\u3000ideographic space",
    "𝕳𝖊𝖑𝖑𝖔 𝒲ℴ𝓇𝓁𝒹 (astral plane letters)",
    "a" * 3000 + " " * 3000 + "b",
]
