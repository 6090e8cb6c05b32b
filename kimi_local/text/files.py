"""Reading the tokenizer files of a checkpoint directory (errors name the file and line), and the bundled template.

`tiktoken.model` is tiktoken's BPE format: one `base64(token bytes) rank` line per token, ranks 0..n-1.
tiktoken's own `load_tiktoken_bpe` would also copy the file into its cache directory; a plain parse is as
fast and keeps a bad line's number in the error.
"""

from __future__ import annotations

import base64
import binascii
import json
from importlib import resources
from pathlib import Path
from typing import Any

RANKS_FILE = "tiktoken.model"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"


def read_ranks_file(path: Path) -> dict[bytes, int]:
    """Mergeable ranks from a tiktoken BPE file; checks they are 0..n-1, unique, and cover all 256 bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer ranks file not found")
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read tokenizer ranks file: {exc}") from exc
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:80]!r}")
        try:
            token = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (binascii.Error, ValueError):
            raise ValueError(f"{path}:{lineno}: bad base64 token or rank: {line[:80]!r}") from None
        if not token:
            raise ValueError(f"{path}:{lineno}: empty token")
        if token in ranks:
            raise ValueError(f"{path}:{lineno}: token {token!r} appears twice")
        ranks[token] = rank
    if not ranks:
        raise ValueError(f"{path}: tokenizer ranks file is empty")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: the {len(missing)} single bytes {missing[:8]}... have no rank; text would not round-trip")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be exactly 0..{len(ranks) - 1}, each once")
    return ranks


def write_ranks_file(path: Path, tokens_in_rank_order: list[bytes]) -> None:
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}" for rank, token in enumerate(tokens_in_rank_order)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def read_json_object(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def builtin_template_text() -> str:
    """The bundled Kimi-K2-Instruct chat template (package data `templates/kimi_k2.jinja`)."""
    return (resources.files("kimi_local.text") / "templates" / "kimi_k2.jinja").read_text(encoding="utf-8")
