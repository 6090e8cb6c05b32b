"""A small tokenizer in Kimi's exact file format, for the demo and tiny checkpoints.

`write_demo_tokenizer(dir, vocab_size)` writes the three files a real Kimi checkpoint has:
* `tiktoken.model`: `vocab_size - 256` ranks, the 256 single bytes then BPE merges learned (deterministically)
  from the built-in sample in `demo_corpus`, so common words are single tokens;
* `tokenizer_config.json`: Kimi's structure, the special names at the same offsets from num_base as in
  Kimi-K2 (so `<|im_end|>` is num_base + 2 here as 163586 is 163584 + 2 there);
* `chat_template.jinja`: the bundled Kimi-K2-Instruct template.
So the whole text path (template, tokenizer, tool-call parser) runs unchanged on a demo model.

If the sample runs out of pairs to merge (very large vocab_size), the remaining ranks are filled with
deterministic extensions of learned tokens by one byte: valid merges, just never frequent.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from kimi_local.text.bpe_train import train_bpe
from kimi_local.text.demo_corpus import demo_corpus
from kimi_local.text.files import CONFIG_FILE, RANKS_FILE, TEMPLATE_FILE, builtin_template_text, write_ranks_file
from kimi_local.text.special_tokens import KIMI_ROLE_TOKENS, NUM_SPECIAL_SLOTS, SpecialTokens
from kimi_local.text.split_pattern import compile_reference_pattern

log = logging.getLogger(__name__)

MIN_VOCAB_SIZE = 512  # 256 single bytes + 256 special slots
_FILLER_BYTES = b" etaoinsrhldcumfpgwybvkxjqz"


def demo_ranks(vocab_size: int) -> list[bytes]:
    """The `vocab_size - 256` tokens of the demo tokenizer in rank order."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 bytes + 256 special slots), got {vocab_size!r}")
    num_merges = vocab_size - NUM_SPECIAL_SLOTS - 256
    pattern = compile_reference_pattern()
    chunk_counts = Counter(chunk.encode("utf-8") for chunk in pattern.findall(demo_corpus()))
    tokens = [bytes([b]) for b in range(256)] + train_bpe(chunk_counts, num_merges)
    if len(tokens) < vocab_size - NUM_SPECIAL_SLOTS:
        log.info("demo corpus gives %d merges; filling %d more", len(tokens) - 256, vocab_size - NUM_SPECIAL_SLOTS - len(tokens))
        tokens = _fill(tokens, vocab_size - NUM_SPECIAL_SLOTS)
    return tokens


def _fill(tokens: list[bytes], target: int) -> list[bytes]:
    known = set(tokens)
    out = list(tokens)
    base = 256
    while len(out) < target:
        stop = len(out)  # extend the tokens that exist at the start of this round, in rank order
        for i in range(base, stop):
            for b in _FILLER_BYTES:
                candidate = out[i] + bytes([b])
                if candidate not in known:
                    known.add(candidate)
                    out.append(candidate)
                    if len(out) == target:
                        return out
        base = stop if stop > base else 256
    return out


def demo_tokenizer_config(num_base: int) -> dict:
    special = SpecialTokens.from_offsets(num_base)
    named = [name for name, flag in zip(special.names, special.is_special) if flag and name not in KIMI_ROLE_TOKENS.values()]
    return {
        "added_tokens_decoder": special.to_added_tokens_decoder(),
        "additional_special_tokens": [name for name in named if not name.startswith("<|reserved_token_")],
        **KIMI_ROLE_TOKENS,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "TikTokenTokenizer",
        "model_max_length": 1000000000000000019884624838656,
    }


def write_demo_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """Write tiktoken.model, tokenizer_config.json and chat_template.jinja for a `vocab_size` model."""
    out_dir = Path(out_dir)
    tokens = demo_ranks(vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_ranks_file(out_dir / RANKS_FILE, tokens)
    config = demo_tokenizer_config(num_base=len(tokens))
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / TEMPLATE_FILE).write_text(builtin_template_text(), encoding="utf-8")
