"""One chat choice's text -> content and tool calls, as it streams.

A thin layer over the text package's `ToolCallStreamParser`: it feeds the forced prefix of the tool choice
first (see `chat_prompt`), passes text straight through as content when tools are off, and remembers what
the choice produced so the non-streaming response and the final stop reason can be built from it.
"""

from __future__ import annotations

from kimi_local.text.tool_calls import ContentDelta, Event, ToolCall, ToolCallDone, ToolCallStreamParser


class Reply:
    def __init__(self, parse_tools: bool, forced_text: str = ""):
        self._parser = ToolCallStreamParser() if parse_tools else None
        self._forced = forced_text
        self.content: list[str] = []
        self.tool_calls: list[ToolCall] = []

    def _record(self, events: list[Event]) -> list[Event]:
        for event in events:
            if isinstance(event, ContentDelta):
                self.content.append(event.text)
            elif isinstance(event, ToolCallDone):
                self.tool_calls.append(event.call)
        return events

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
