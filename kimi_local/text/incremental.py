"""Streaming detokenization that never emits half a character.

A token is a byte string, and one UTF-8 character (CJK: 3 bytes, emoji: 4) is often split over two or three
tokens. Decoding each token on its own would print replacement characters mid-stream. Instead the bytes go
through Python's incremental UTF-8 decoder: it holds back an incomplete trailing sequence until the next token
completes it, and replaces truly invalid bytes exactly as a one-shot `bytes.decode("utf-8", "replace")` of the
whole output would. So the concatenation of everything `feed` and `flush` return equals the full decode.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable


class IncrementalDecoder:
    """Feed token ids one at a time; get the text that is now certain. Call `flush` when the stream ends."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        # token_bytes(id) gives the bytes a token contributes (b"" for a skipped special token).
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def feed_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.feed(token_id) for token_id in token_ids)

    @property
    def has_pending_bytes(self) -> bool:
        """True while an incomplete character is held back."""
        return bool(self._utf8.getstate()[0])

    def flush(self) -> str:
        """End of stream: a dangling incomplete character becomes U+FFFD, as in the one-shot decode."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
