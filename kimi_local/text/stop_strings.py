"""Stop strings matched on detokenized text, with a holdback buffer.

A stop string can arrive split over several tokens ("END" as "E" + "ND"), so text that could be the start of
a stop string is held back until the next piece decides it: either the stop string completes (the output ends
just before it, and the held text is never sent) or it cannot any more (the text is released). So a client
never sees a partial stop string. The output ends at the stop string that completes first (the smallest end
position; among those, the longest), however the text was split into pieces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    text: str  # text released by this piece (before the stop string, if it matched)
    matched: str | None  # the stop string that ended the output, if any


class StopStringMatcher:
    def __init__(self, stop_strings: list[str] | tuple[str, ...] = ()):
        if any(not isinstance(s, str) or not s for s in stop_strings):
            raise ValueError("stop strings must be non-empty strings")
        self.stop_strings = tuple(dict.fromkeys(stop_strings))
        self._longest = max((len(s) for s in self.stop_strings), default=0)
        self._pending = ""
        self.matched: str | None = None

    @property
    def pending(self) -> str:
        """Text held back because it might begin a stop string."""
        return self._pending

    def feed(self, text: str) -> StopMatch:
        if self.matched is not None:
            return StopMatch("", self.matched)
        if not self.stop_strings:
            return StopMatch(text, None)
        pending = self._pending + text
        # The match that completes first (smallest end), as if the text were scanned one character at a time;
        # so the result does not depend on how the text was split into pieces.
        hit = min(((pending.find(s) + len(s), pending.find(s), s) for s in self.stop_strings if s in pending),
                  default=None)
        if hit is not None:
            _, pos, stop = hit
            self._pending = ""
            self.matched = stop
            return StopMatch(pending[:pos], stop)
        keep = self._holdback(pending)
        self._pending = pending[len(pending) - keep:]
        return StopMatch(pending[: len(pending) - keep], None)

    def flush(self) -> str:
        """End of output without a match: the held text was not a stop string after all."""
        text, self._pending = self._pending, ""
        return "" if self.matched is not None else text

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for k in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stop_strings):
                return k
        return 0
