"""The tool-call layer over a choice's text: tools off, forced prefixes, and which of the parser's calls a
reply sends (calls without a usable id are dropped, events and all, and the kept ones are numbered among
themselves; arguments that parse are kept even without the end marker)."""

from __future__ import annotations

from kimi_local.server.reply import Reply
from kimi_local.server.serving_messages import tool_input
from kimi_local.text.tool_calls import ContentDelta, ToolCallDelta, ToolCallDone

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
BROKEN_THEN_GOOD = f"Hi.{SB}{CB}functions.f:0{CE}{CB}functions.g:1{AB}{{\"x\": 1}}{CE}{SE}"


def test_reply_without_tools_is_all_content():
    reply = Reply(parse_tools=False)
    events = reply.feed("a <|tool_call_begin|> b") + reply.finish()
    assert events == [ContentDelta("a <|tool_call_begin|> b")] and reply.tool_calls == []
    assert reply.finish_reason("stop") == "stop"


def test_reply_with_forced_named_call():
    reply = Reply(parse_tools=True, forced_text="<|tool_calls_section_begin|><|tool_call_begin|>functions.f:2"
                                                "<|tool_call_argument_begin|>")
    events = reply.feed('{"a"') + reply.feed(": 1}<|tool_call_end|><|tool_calls_section_end|>") + reply.finish()
    assert events[0] == ToolCallDelta(0, "functions.f:2", "f", "")
    (call,) = reply.tool_calls
    assert (call.id, call.name, call.arguments, call.error) == ("functions.f:2", "f", '{"a": 1}', None)
    assert reply.text == "" and reply.finish_reason("stop") == "tool_calls"
    assert reply.finish_reason("length") == "length"


def test_forced_prefix_alone_still_parses_at_the_end():
    """Output that ends right after a forced "required" prefix is a call without an id: nothing is sent."""
    reply = Reply(parse_tools=True, forced_text="<|tool_calls_section_begin|><|tool_call_begin|>")
    assert reply.finish() == [] and reply.tool_calls == [] and reply.text == ""


def feed_all(reply: Reply, pieces) -> list:
    events = []
    for piece in pieces:
        events += reply.feed(piece)
    return events + reply.finish()


def test_a_call_without_argument_marker_is_dropped_and_the_next_renumbered():
    for pieces in ([BROKEN_THEN_GOOD], list(BROKEN_THEN_GOOD)):
        reply = Reply(parse_tools=True)
        events = feed_all(reply, pieces)
        calls = [e for e in events if isinstance(e, (ToolCallDelta, ToolCallDone))]
        assert {e.index for e in calls} == {0}
        assert [e.id for e in calls if isinstance(e, ToolCallDelta) and e.id] == ["functions.g:1"]
        assert [(c.id, c.name) for c in reply.tool_calls] == [("functions.g:1", "g")]
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == reply.text == "Hi."
        assert reply.finish_reason("stop") == "tool_calls"


def test_a_call_cut_inside_its_id_sends_nothing():
    reply = Reply(parse_tools=True, forced_text=SB + CB)
    events = feed_all(reply, ["上 his", " we\ufffd"])
    assert events == [] and reply.tool_calls == [] and reply.text == ""
    assert reply.finish_reason("length") == "length" and reply.finish_reason("stop") == "stop"


def test_a_call_whose_id_names_no_function_is_dropped():
    reply = Reply(parse_tools=True)
    events = feed_all(reply, [f"{SB}{CB}functions.:0{AB}", '{"a": 1}', f"{CE}{SE}"])
    assert events == [] and reply.tool_calls == []


def test_arguments_that_parse_are_kept_without_the_end_marker():
    reply = Reply(parse_tools=True, forced_text=f"{SB}{CB}functions.f:0{AB}")
    feed_all(reply, ['{"city": "Paris"}'])
    (call,) = reply.tool_calls
    assert call.error and tool_input(call) == {"city": "Paris"} and call.arguments == '{"city": "Paris"}'
    reply = Reply(parse_tools=True, forced_text=f"{SB}{CB}functions.f:0{AB}")
    feed_all(reply, ['{"city": '])
    assert tool_input(reply.tool_calls[0]) == {}  # cut inside: nothing to parse
