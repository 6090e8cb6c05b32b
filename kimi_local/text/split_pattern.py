"""Kimi's pre-tokenizer: the regex that cuts text into chunks before BPE, and the long-run guard.

BPE never merges across chunk boundaries, so the chunking is part of the token ids the model was trained on.
Kimi's pattern uses character-class intersection (`[...&&[^\\p{Han}]]`): letters and marks that are *not* Han
form word chunks, while runs of Han characters form chunks of their own. tiktoken's Rust regex understands
`&&`; Python's `regex` module understands it only in V1 mode (in V0 it compiles but splits wrongly), and `re`
has no `\\p{...}` at all. `reference_split` is the pure-Python reference that tests compare tiktoken against.

Kimi's tokenizer (like Llama 3's, from which it is copied) also cuts the input into pieces of at most 400,000
characters and cuts any run of more than 25,000 consecutive whitespace or non-whitespace characters, to keep
tiktoken's regex engine away from pathological backtracking. Those cuts change token ids only for such
extreme inputs, but they are part of the tokenizer's definition, so `split_long_runs` reproduces them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import regex

PAT_STR = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000

# A run longer than MAX_RUN_CHARS of whitespace or of non-whitespace (Python's \s is str.isspace).
_LONG_RUN = re.compile(r"\s{%d,}|\S{%d,}" % (MAX_RUN_CHARS + 1, MAX_RUN_CHARS + 1))


def compile_reference_pattern() -> regex.Pattern:
    """The pattern compiled with `regex` in V1 mode, the only Python mode in which `&&` means intersection."""
    return regex.compile(PAT_STR, flags=regex.V1)


def reference_split(text: str, pattern: regex.Pattern | None = None) -> list[str]:
    """Chunks of `text` as the reference regex finds them (their concatenation is always `text`)."""
    return (pattern or compile_reference_pattern()).findall(text)


def split_long_runs(text: str) -> Iterator[str]:
    """Cut `text` the way Kimi's `encode` does before handing pieces to tiktoken.

    First into windows of MAX_ENCODE_CHARS characters, then, inside each window, a run of more than
    MAX_RUN_CHARS whitespace (or non-whitespace) characters is cut every MAX_RUN_CHARS characters counted
    from the start of the run. Ordinary text has no such run and comes back as one piece.
    """
    for start in range(0, len(text), MAX_ENCODE_CHARS):
        window = text[start : start + MAX_ENCODE_CHARS]
        piece_start = 0
        for run in _LONG_RUN.finditer(window):
            for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
                yield window[piece_start:cut]
                piece_start = cut
        yield window[piece_start:]
