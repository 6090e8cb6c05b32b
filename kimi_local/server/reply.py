"""One chat choice's text -> content and tool calls, as it streams.

A thin layer over the text package's `ToolCallStreamParser`: it feeds the forced prefix of the tool choice
first (see `chat_prompt`), passes text straight through as content when tools are off, and remembers what
the choice produced so the non-streaming response and the final stop reason can be built from it.

It also decides which of the parser's calls reach the client. A call that is not addressable (its id never
completed, because the output was cut off or the argument marker never came, or the id names no function)
is dropped, events and all: a client could neither run it nor answer it, and an OpenAI `tool_call` or an
Anthropic `tool_use` with a fragment for id and name is worse than none. Its text is not turned into content
either: it is a piece of Kimi's tool-call syntax, not prose for the reader (it is logged). Kept calls are
numbered 0, 1, ... among themselves, as both APIs expect. A kept call whose arguments are malformed (cut
off, not JSON, no end marker) is still sent: the OpenAI API carries its argument text as generated, and the
Anthropic API its arguments when they parse (see `ToolCall.arguments_object`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from kimi_local.text.tool_calls import (
    ContentDelta, Event, ToolCall, ToolCallDelta, ToolCallDone, ToolCallStreamParser,
)

log = logging.getLogger(__name__)


class Reply:
    def __init__(self, parse_tools: bool, forced_text: str = ""):
        self._parser = ToolCallStreamParser() if parse_tools else None
        self._forced = forced_text
        self.content: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self._kept: dict[int, int] = {}  # parser's call index -> index among the kept calls
        self._dropped: set[int] = set()  # parser's call indexes not sent

    def _record(self, events: list[Event]) -> list[Event]:
        # The parser ends a call whose id never completed in the same batch that starts it.
        doomed = {e.index for e in events if isinstance(e, ToolCallDone) and not e.call.is_addressable}
        out: list[Event] = []
        for event in events:
            if isinstance(event, ContentDelta):
                self.content.append(event.text)
                out.append(event)
            elif isinstance(event, ToolCallDelta):
                if event.id is not None:
                    if event.index in doomed or not event.name:
                        self._dropped.add(event.index)
                    else:
                        self._kept[event.index] = len(self._kept)
                if event.index not in self._dropped:
                    out.append(replace(event, index=self._kept[event.index]))
            elif isinstance(event, ToolCallDone):
                if event.index in self._dropped or not event.call.is_addressable:
                    log.warning("dropping a tool call that names no function (%s): %r", event.call.error,
                                event.call.id[:80])
                    continue
                self.tool_calls.append(event.call)
                out.append(replace(event, index=self._kept[event.index]))
        return out

    def feed(self, text: str) -> list[Event]:
        if self._forced:
            text, self._forced = self._forced + text, ""
        if self._parser is None:
            return self._record([ContentDelta(text)] if text else [])
        return self._record(self._parser.feed(text) if text else [])

    def finish(self) -> list[Event]:
        events = self.feed("") if self._forced else []
        if self._parser is not None:
            events += self._record(self._parser.finish())
        return events

    @property
    def text(self) -> str:
        return "".join(self.content)

    def finish_reason(self, engine_reason: str | None) -> str:
        """OpenAI's finish_reason: "tool_calls" when the choice ended normally after calling tools."""
        if engine_reason == "stop" and self.tool_calls:
            return "tool_calls"
        return "length" if engine_reason == "length" else "stop"
