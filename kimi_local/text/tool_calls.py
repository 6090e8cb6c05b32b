"""Kimi's tool-call output -> OpenAI tool calls, one-shot or while tokens stream.

Kimi writes tool calls after any ordinary content, as

    <|tool_calls_section_begin|>
      <|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|>
      ...more calls...
    <|tool_calls_section_end|>

The markers are single token ids that are not "special", so decoded text keeps them. Whitespace around ids
and arguments is dropped. The id is kept exactly (the template echoes it back in later turns); the function
name is the id without its `functions.` prefix and `:IDX` suffix. vLLM's lenient variants are accepted too:
the singular `<|tool_call_section_begin|>`/`<|tool_call_section_end|>`, and bare `name:0` ids.

`ToolCallStreamParser` is a small state machine fed text pieces of any size; a marker split across pieces is
held back until it is complete or proven not to be one. It emits content deltas, tool-call deltas (the first
one of a call carries id and name, the following ones argument fragments, for OpenAI `tool_calls` deltas and
Anthropic `input_json_delta`) and a done event per call. `parse_tool_calls` is that same parser fed the whole
text, so one-shot and streaming results agree by construction.

Nothing in the output can make it raise. Malformed calls are surfaced, not dropped: a call whose arguments
are not a JSON object, or that lacks its argument or end marker, or that the output ends inside, is returned
with `error` set; the front end decides what to send. A call whose id never completed (no argument marker
came) has `id_complete` False: its id and name are whatever text came, not an id. Its start delta and its
done event come out of the same `feed`/`finish` call, so a front end can drop both. Text between calls inside
a section is ignored.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

SECTION_BEGIN = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
SECTION_END = ("<|tool_calls_section_end|>", "<|tool_call_section_end|>")
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
MARKERS = (*SECTION_BEGIN, *SECTION_END, CALL_BEGIN, ARGUMENT_BEGIN, CALL_END)
MAX_ID_CHARS = 512  # an "id" longer than this without an argument marker is not an id


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text exactly as generated (whitespace around it removed)
    error: str | None = None  # why the call is malformed, or None
    id_complete: bool = True  # False: the argument marker never came, so `id` is a fragment

    @property
    def is_addressable(self) -> bool:
        """The call has a real id naming a function: something a client can run and answer."""
        return self.id_complete and bool(self.name)

    def arguments_object(self) -> dict | None:
        """The arguments as a JSON object when they parse as one, whatever else is wrong with the call (a
        missing end marker leaves complete arguments usable)."""
        try:
            value = json.loads(self.arguments)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    index: int  # position of the call in this output, from 0
    id: str | None  # set on the first delta of a call only
    name: str | None  # set on the first delta of a call only
    arguments: str  # a fragment; the fragments of a call concatenate to its arguments


@dataclass(frozen=True)
class ToolCallDone:
    index: int
    call: ToolCall


Event = ContentDelta | ToolCallDelta | ToolCallDone


def function_name(call_id: str) -> str:
    """`functions.get_weather:0` -> `get_weather`; also accepts `get_weather:0` and `get_weather`."""
    name = call_id[len("functions."):] if call_id.startswith("functions.") else call_id
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isascii() and tail.isdigit() else name


def arguments_error(arguments: str) -> str | None:
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError) as exc:
        return f"arguments are not valid JSON ({exc})" if arguments else "arguments are empty"
    return None if isinstance(value, dict) else "arguments are not a JSON object"


def _alternation(markers) -> re.Pattern:
    return re.compile("|".join(re.escape(m) for m in markers))


_CONTENT_EXITS = _alternation(SECTION_BEGIN)
_SECTION_EXITS = _alternation((CALL_BEGIN, *SECTION_END))
_CALL_EXITS = _alternation((ARGUMENT_BEGIN, CALL_END, CALL_BEGIN, *SECTION_END))
_ARGUMENT_EXITS = _alternation((CALL_END, CALL_BEGIN, *SECTION_END))
_MARKER_PREFIXES = frozenset(m[:k] for m in MARKERS for k in range(1, len(m)))
_MAX_PREFIX = max(len(m) for m in MARKERS) - 1


def _partial_marker_length(text: str) -> int:
    """Length of the longest suffix of `text` that could be the start of a marker."""
    for k in range(min(len(text), _MAX_PREFIX), 0, -1):
        if text[-k:] in _MARKER_PREFIXES:
            return k
    return 0


class ToolCallStreamParser:
    """Feed decoded text pieces; get content and tool-call events. Call `finish` at the end of the output."""

    CONTENT, SECTION, CALL_ID, ARGUMENTS = "content", "section", "call_id", "arguments"

    def __init__(self):
        self.state = self.CONTENT
        self._pending = ""  # unconsumed text (at most a possible partial marker between calls to feed)
        self._id_text = ""
        self._index = -1  # index of the current / last call
        self._call_id = ""
        self._arguments: list[str] = []
        self._held_space = ""  # trailing whitespace of the arguments, emitted only if more text follows
        self.num_calls = 0

    # -- events of one call ---------------------------------------------------------------------------

    def _start_call(self, events: list[Event]) -> None:
        self._index = self.num_calls
        self.num_calls += 1
        self._call_id = self._id_text.strip()
        self._id_text, self._arguments, self._held_space = "", [], ""
        events.append(ToolCallDelta(self._index, self._call_id, function_name(self._call_id), ""))

    def _argument_text(self, text: str, events: list[Event]) -> None:
        if not self._arguments and not self._held_space:
            text = text.lstrip()
        body = text.rstrip()
        if body:
            fragment = self._held_space + body
            self._arguments.append(fragment)
            self._held_space = text[len(body):]
            events.append(ToolCallDelta(self._index, None, None, fragment))
        else:
            self._held_space += text

    def _end_call(self, events: list[Event], error: str | None = None, id_complete: bool = True) -> None:
        arguments = "".join(self._arguments)
        if error is None:
            error = arguments_error(arguments)
        name = function_name(self._call_id)
        if not name:
            problem = "tool call has an empty id" if not self._call_id else "tool call id names no function"
            error = problem + (f"; {error}" if error else "")
        call = ToolCall(self._call_id, name, arguments, error, id_complete)
        if error:
            log.debug("malformed tool call %d: %s", self._index, error)
        events.append(ToolCallDone(self._index, call))

    # -- the state machine ----------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        self._pending += text
        while self._step(events):
            pass
        return events

    def _step(self, events: list[Event]) -> bool:
        """Consume what can be decided from the pending text; True while progress is possible."""
        pending = self._pending
        if not pending:
            return False
        exits = {self.CONTENT: _CONTENT_EXITS, self.SECTION: _SECTION_EXITS,
                 self.CALL_ID: _CALL_EXITS, self.ARGUMENTS: _ARGUMENT_EXITS}[self.state]
        match = exits.search(pending)
        if match is None:
            keep = _partial_marker_length(pending)
            self._consume(pending[: len(pending) - keep], events)
            self._pending = pending[len(pending) - keep :]
            return False
        self._consume(pending[: match.start()], events)
        self._pending = pending[match.end() :]
        self._on_marker(match.group(), events)
        return True

    def _consume(self, text: str, events: list[Event]) -> None:
        if not text:
            return
        if self.state == self.CONTENT:
            events.append(ContentDelta(text))
        elif self.state == self.SECTION:
            if text.strip():
                log.debug("ignoring text between tool calls: %r", text[:80])
        elif self.state == self.CALL_ID:
            self._id_text += text
            if len(self._id_text.strip()) > MAX_ID_CHARS:
                self._id_text = self._id_text.strip()[:MAX_ID_CHARS]
                self._start_call(events)
                self._end_call(events, f"no {ARGUMENT_BEGIN} within {MAX_ID_CHARS} characters of {CALL_BEGIN}",
                               id_complete=False)
                self.state = self.SECTION  # skip the rest of this call, up to the next marker
        else:
            self._argument_text(text, events)

    def _on_marker(self, marker: str, events: list[Event]) -> None:
        state = self.state
        if state == self.CONTENT:  # a section begins
            self.state = self.SECTION
            return
        if state == self.CALL_ID:
            if marker == ARGUMENT_BEGIN:
                self._start_call(events)
                self.state = self.ARGUMENTS
                return
            self._start_call(events)
            self._end_call(events, f"missing {ARGUMENT_BEGIN}", id_complete=False)
        elif state == self.ARGUMENTS:
            self._end_call(events, None if marker == CALL_END else f"missing {CALL_END}")
        # From here: the marker ends a call or appears between calls.
        if marker == CALL_BEGIN:
            self.state = self.CALL_ID
        elif marker in SECTION_END:
            self.state = self.CONTENT
        else:
            self.state = self.SECTION

    def finish(self) -> list[Event]:
        """End of output: flush held-back text and close a call the output ended inside."""
        events: list[Event] = []
        rest, self._pending = self._pending, ""
        if self.state == self.CONTENT and rest:
            events.append(ContentDelta(rest))
        elif self.state == self.CALL_ID:
            self._id_text += rest
            self._start_call(events)
            self._end_call(events, f"output ended before {ARGUMENT_BEGIN}", id_complete=False)
        elif self.state == self.ARGUMENTS:
            if rest:
                self._argument_text(rest, events)
            self._end_call(events, f"output ended before {CALL_END}")
        self.state = self.CONTENT
        return events


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a complete output; content is None when there is none."""
    parser = ToolCallStreamParser()
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    calls = [e.call for e in events if isinstance(e, ToolCallDone)]
    return content or None, calls
