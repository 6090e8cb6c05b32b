"""Keeping control tokens out of user text: only the chat template may emit <|im_end|> and friends.

A rendered prompt is one string, so after rendering nothing tells the template's `<|im_end|>` apart from a
user who typed "<|im_end|>". Encoding it with special tokens allowed would let any message end its own turn
and forge an assistant turn or a tool call. The guard marks user text *before* rendering:

1. In every string of the messages and tools (values and dict keys), each occurrence of a control token's
   text is replaced by a placeholder: U+FDD0 followed by the private-use character U+E000 + slot. Placeholders
   contain no ASCII, so whatever the template does with the string (concatenate, JSON-encode, slice between
   whole characters) it can no longer contain control-token text. U+FDD0 and U+FDD1 are Unicode
   noncharacters, reserved for exactly this kind of internal use; any already in the input are dropped, so
   placeholders cannot be forged.
2. Control-token text could still appear *across* two pieces, e.g. content parts ["<|im_", "end|>"] that
   the template concatenates. So a string gets a break mark U+FDD1 at its start if its first character can
   continue a token (it occurs in some token after the first position), and at its end if its last character
   can begin or continue one. Any token spelled across a boundary of a user string then contains a break
   mark. Values of "role" and "type" keys are left unbroken (templates compare them; they are validated).
3. After rendering, control-token text found in the string can only be the template's own: it becomes
   control ids. Every other piece has its break marks removed and its placeholders put back, and is encoded
   as ordinary text. Marks never reach the token ids, and the ordinary text is encoded in the same pieces
   as without the guard, so ids are unchanged for conversations that contain no control text.

Assumption: the template does not delete characters from inside user strings (Kimi's templates print them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

PLACEHOLDER = "\ufdd0"
BREAK = "\ufdd1"
_SLOT_BASE = 0xE000
_UNBROKEN_KEYS = frozenset({"role", "type"})


class ControlGuard:
    """Marks control-token text in user data, then splits a rendered prompt into plain and control pieces."""

    def __init__(self, control_names: Sequence[str]):
        if not control_names or len(control_names) > 0x1000:
            raise ValueError("a control guard needs between 1 and 4096 control token names")
        self.names = tuple(control_names)
        longest_first = sorted(range(len(self.names)), key=lambda i: -len(self.names[i]))
        alternation = "|".join(re.escape(self.names[i]) for i in longest_first)
        self._names_re = re.compile(alternation)
        self._split_re = re.compile(f"({alternation})")
        self._slot = {name: i for i, name in enumerate(self.names)}
        self._placeholder_re = re.compile(f"{PLACEHOLDER}([{chr(_SLOT_BASE)}-{chr(_SLOT_BASE + len(self.names) - 1)}])?")
        self._can_continue = frozenset(c for name in self.names for c in name[1:])
        self._can_precede = frozenset(c for name in self.names for c in name[:-1])

    # -- before rendering ----------------------------------------------------------------------------

    def _placeholders(self, text: str) -> str:
        text = text.replace(PLACEHOLDER, "").replace(BREAK, "")
        return self._names_re.sub(lambda m: PLACEHOLDER + chr(_SLOT_BASE + self._slot[m[0]]), text)

    def protect_text(self, text: str, breakable: bool = True) -> str:
        text = self._placeholders(text)
        if breakable and text:
            if text[0] in self._can_continue:
                text = BREAK + text
            if text[-1] in self._can_precede:
                text = text + BREAK
        return text

    def protect(self, value: Any, key: str | None = None) -> Any:
        """A copy of plain data (dicts, lists, strings) with every string protected."""
        if isinstance(value, str):
            return self.protect_text(value, breakable=key not in _UNBROKEN_KEYS)
        if isinstance(value, dict):
            return {self._placeholders(k): self.protect(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.protect(v) for v in value]
        return value

    # -- after rendering -----------------------------------------------------------------------------

    def restore_text(self, text: str) -> str:
        """Plain text of a rendered piece: marks removed, placeholders back to the user's original text."""
        text = text.replace(BREAK, "")
        return self._placeholder_re.sub(lambda m: self.names[ord(m[1]) - _SLOT_BASE] if m[1] else "", text)

    def split(self, rendered: str) -> list[tuple[str, bool]]:
        """[(piece, is_control)]: control pieces are exact token names the template emitted."""
        out = []
        for i, piece in enumerate(self._split_re.split(rendered)):
            if i % 2:
                out.append((piece, True))
            else:
                piece = self.restore_text(piece)
                if piece:
                    out.append((piece, False))
        return out
