"""Kimi's tokenizer: tiktoken BPE over Kimi's split pattern, plus 256 special slots after the ranks.

Built from a checkpoint directory's `tiktoken.model` (the ranks) and `tokenizer_config.json` (the names of the
special slots), without any download. Token ids match Kimi's own `TikTokenTokenizer` (the HF remote code):
the same pattern, the same long-run cuts, and no BOS added.

One deliberate difference: `encode` treats special-token text as plain text unless asked otherwise
(`allow_special=True`), where Kimi's default converts it. A user who types "<|im_end|>" must never end their
own turn. Prompts go through `ChatFormat.encode_messages`, which lets only the template's markers become
control tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tiktoken

from kimi_local.text.files import CONFIG_FILE, RANKS_FILE, read_json_object, read_ranks_file
from kimi_local.text.incremental import IncrementalDecoder
from kimi_local.text.special_tokens import NUM_SPECIAL_SLOTS, SpecialTokens
from kimi_local.text.split_pattern import PAT_STR, split_long_runs

log = logging.getLogger(__name__)

IM_END = "<|im_end|>"
EOS = "[EOS]"


class KimiTokenizer:
    """Text <-> token ids for Kimi-K2 and for checkpoints that ship a tokenizer in the same format."""

    def __init__(self, mergeable_ranks: dict[bytes, int], special: SpecialTokens, eos_token: str = "[EOS]",
                 bos_token: str = "[BOS]", name: str = "kimi"):
        if special.num_base != len(mergeable_ranks):
            raise ValueError(f"special tokens start at {special.num_base}, but there are {len(mergeable_ranks)} ranks")
        self.special = special
        self._ids_by_name = special.ids_by_name
        for role, token in (("eos_token", eos_token), ("bos_token", bos_token)):
            if token not in self._ids_by_name:
                raise ValueError(f"{role} {token!r} is not one of the special tokens")
        self.eos_id = self._ids_by_name[eos_token]
        self.bos_id = self._ids_by_name[bos_token]
        self._enc = tiktoken.Encoding(
            name, pat_str=PAT_STR, mergeable_ranks=mergeable_ranks, special_tokens=self._ids_by_name
        )
        self._skippable = frozenset(
            special.num_base + i for i, is_special in enumerate(special.is_special) if is_special
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> "KimiTokenizer":
        """Load `tiktoken.model` and `tokenizer_config.json` from a checkpoint directory."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: checkpoint directory not found")
        ranks = read_ranks_file(path / RANKS_FILE)
        config_path = path / CONFIG_FILE
        config = read_json_object(config_path)
        special = SpecialTokens.from_added_tokens_decoder(
            config.get("added_tokens_decoder", {}), num_base=len(ranks), source=str(config_path)
        )
        roles = {}
        for role, default in (("eos_token", "[EOS]"), ("bos_token", "[BOS]")):
            value = config.get(role, default)
            if isinstance(value, dict):  # HF's AddedToken serialisation: {"content": "[EOS]", ...}
                value = value.get("content")
            if not isinstance(value, str) or value not in special.ids_by_name:
                raise ValueError(f"{config_path}: {role} {value!r} is not one of the added tokens")
            roles[role] = value
        log.debug("tokenizer from %s: %d ranks + %d special slots", path, len(ranks), NUM_SPECIAL_SLOTS)
        return cls(ranks, special, name=path.name or "kimi", **roles)

    # -- sizes and names ------------------------------------------------------------------------------

    @property
    def num_base_tokens(self) -> int:
        return self.special.num_base

    @property
    def vocab_size(self) -> int:
        return self.special.num_base + NUM_SPECIAL_SLOTS

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Generation ends at <|im_end|> (end of the assistant turn), [EOS], or the configured eos token."""
        ids = [self._ids_by_name[name] for name in (IM_END, EOS) if name in self._ids_by_name] + [self.eos_id]
        return tuple(dict.fromkeys(ids))

    @property
    def control_token_names(self) -> tuple[str, ...]:
        """Every special slot's text, flagged special or not: each is a single id plain text never yields."""
        return self.special.names

    def token_id(self, name: str) -> int:
        """Id of a special token by its text, e.g. token_id("<|im_end|>")."""
        try:
            return self._ids_by_name[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of this tokenizer") from None

    def is_control(self, token_id: int) -> bool:
        return self.special.num_base <= token_id < self.vocab_size

    def is_special(self, token_id: int) -> bool:
        """Flagged special in tokenizer_config (dropped by skip_special; the tool-call markers are not)."""
        return token_id in self._skippable

    # -- encoding -------------------------------------------------------------------------------------

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text is encoded as plain text unless `allow_special`."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in split_long_runs(text):
            if allow_special:
                ids += self._enc.encode(piece, allowed_special="all")
            else:
                ids += self._enc.encode_ordinary(piece)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text, allow_special=False)

    # -- decoding -------------------------------------------------------------------------------------

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's bytes are its name)."""
        (token_id,) = self._check_ids([token_id])
        return self._enc.decode_single_token_bytes(token_id)

    def decode_bytes(self, ids, skip_special: bool = False) -> bytes:
        ids = self._check_ids(ids)
        if skip_special:
            ids = [i for i in ids if i not in self._skippable]
        return self._enc.decode_bytes(ids)

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD. Markers stay unless skip_special."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def incremental_decoder(self, skip_special: bool = False) -> IncrementalDecoder:
        """A streaming decoder whose pieces always concatenate to `decode(all ids)`."""
        if skip_special:
            return IncrementalDecoder(lambda i: b"" if i in self._skippable else self.token_bytes(i))
        return IncrementalDecoder(self.token_bytes)
