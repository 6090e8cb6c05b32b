"""The 256 special-token slots that follow the BPE ranks, and how tokenizer_config.json names them.

Kimi's vocabulary is `num_base` ordinary BPE tokens (163,584 for Kimi-K2) followed by 256 reserved slots.
`tokenizer_config.json` names some slots in `added_tokens_decoder` (`{"163586": {"content": "<|im_end|>",
"special": true}, ...}`); the rest are called `<|reserved_token_{id}|>`. The `special` flag only matters for
`skip_special` decoding: the tool-call markers are *not* special, so text decoded for a user keeps them and
the tool-call parser can see them. Every slot, special flag or not, is a single id that ordinary text never
produces.

KIMI_SPECIAL_TOKENS lists the names by *offset* from num_base, so the demo tokenizer can put the same names
at the same offsets of its own, much smaller, vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NUM_SPECIAL_SLOTS = 256

# (offset from num_base, name, "special" flag) as in Kimi-K2's tokenizer_config.json.
KIMI_SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (0, "[BOS]", True),
    (1, "[EOS]", True),
    (2, "<|im_end|>", True),
    (3, "<|im_user|>", True),
    (4, "<|im_assistant|>", True),
    (6, "<|start_header_id|>", True),
    (7, "<|end_header_id|>", True),
    (9, "[EOT]", True),
    (10, "<|im_system|>", True),
    (11, "<|tool_calls_section_begin|>", False),
    (12, "<|tool_calls_section_end|>", False),
    (13, "<|tool_call_begin|>", False),
    (14, "<|tool_call_argument_begin|>", False),
    (15, "<|tool_call_end|>", False),
    (17, "<|im_middle|>", True),
    (18, "<|media_begin|>", True),
    (19, "<|media_content|>", True),
    (20, "<|media_end|>", True),
    (21, "<|media_pad|>", True),
    (22, "<think>", False),
    (23, "</think>", False),
    (254, "[UNK]", True),
    (255, "[PAD]", True),
)

# tokenizer_config.json's named roles (bos_token, ...) for the table above.
KIMI_ROLE_TOKENS = {"bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]", "unk_token": "[UNK]"}


def reserved_name(token_id: int) -> str:
    return f"<|reserved_token_{token_id}|>"


@dataclass(frozen=True)
class SpecialTokens:
    """Names and flags of the 256 slots starting at `num_base`; index i is token id num_base + i."""

    num_base: int
    names: tuple[str, ...]
    is_special: tuple[bool, ...]

    def __post_init__(self) -> None:
        assert len(self.names) == NUM_SPECIAL_SLOTS and len(self.is_special) == NUM_SPECIAL_SLOTS
        assert len(set(self.names)) == NUM_SPECIAL_SLOTS, "special token names must be unique"

    @property
    def ids_by_name(self) -> dict[str, int]:
        return {name: self.num_base + i for i, name in enumerate(self.names)}

    @classmethod
    def from_offsets(cls, num_base: int, table=KIMI_SPECIAL_TOKENS) -> "SpecialTokens":
        names = [reserved_name(num_base + i) for i in range(NUM_SPECIAL_SLOTS)]
        flags = [True] * NUM_SPECIAL_SLOTS
        for offset, name, special in table:
            names[offset], flags[offset] = name, special
        return cls(num_base, tuple(names), tuple(flags))

    @classmethod
    def from_added_tokens_decoder(cls, decoder: Any, num_base: int, source: str) -> "SpecialTokens":
        """Read tokenizer_config.json's `added_tokens_decoder`; `source` names the file in error messages."""
        if not isinstance(decoder, dict):
            raise ValueError(f"{source}: 'added_tokens_decoder' must be an object mapping ids to tokens")
        names = [reserved_name(num_base + i) for i in range(NUM_SPECIAL_SLOTS)]
        flags = [True] * NUM_SPECIAL_SLOTS
        for key, entry in decoder.items():
            try:
                token_id = int(key)
            except ValueError:
                raise ValueError(f"{source}: added_tokens_decoder key {key!r} is not a token id") from None
            if not num_base <= token_id < num_base + NUM_SPECIAL_SLOTS:
                raise ValueError(
                    f"{source}: added token id {token_id} is outside the special range "
                    f"[{num_base}, {num_base + NUM_SPECIAL_SLOTS}) that follows the {num_base} ranks of tiktoken.model"
                )
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not entry["content"]:
                raise ValueError(f"{source}: added_tokens_decoder[{key!r}] needs a non-empty string 'content'")
            names[token_id - num_base] = entry["content"]
            flags[token_id - num_base] = bool(entry.get("special", True))
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            raise ValueError(f"{source}: added token names are not unique: {sorted(duplicates)}")
        return cls(num_base, tuple(names), tuple(flags))

    def to_added_tokens_decoder(self, include_reserved: bool = False) -> dict[str, dict]:
        """The `added_tokens_decoder` object in Kimi's format (reserved slots left out unless asked for)."""
        out = {}
        for i, (name, special) in enumerate(zip(self.names, self.is_special)):
            token_id = self.num_base + i
            if include_reserved or name != reserved_name(token_id):
                out[str(token_id)] = {
                    "content": name,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": special,
                }
        return out
