"""Tool-call parsing: the documented variants, malformed and hostile output (never an exception), and
streaming against one-shot parsing at every split point."""

from __future__ import annotations

import json
import random

import pytest

from kimi_local.text.chat_reference import render_reference
from kimi_local.text.messages import normalize_messages
from kimi_local.text.tool_calls import (
    MARKERS,
    MAX_ID_CHARS,
    ContentDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallDone,
    ToolCallStreamParser,
    function_name,
    parse_tool_calls,
)

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


def call(call_id: str, arguments: str) -> str:
    return f"{CB}{call_id}{AB}{arguments}{CE}"


OUTPUTS = {
    "plain": "Just an answer, no tools. 你好 <|not a marker|> <|tool",
    "one call": SB + call("functions.get_weather:0", '{"city": "Beijing"}') + SE,
    "content then two calls": "Let me check both.\n" + SB + call("functions.get_weather:0", '{"city": "北京"}')
    + call("functions.get_time:1", '{"tz": "Asia/Shanghai"}') + SE,
    "whitespace around markers": f"Sure. {SB}\n  {CB} functions.search:3 {AB}\n {{\"q\": \"a b\"}} \n{CE}\n{SE}\n",
    "singular section markers": "<|tool_call_section_begin|>" + call("functions.f:0", "{}") + "<|tool_call_section_end|>",
    "bare ids": SB + call("get_weather:0", '{"city": "Paris"}') + call("lookup:12", '{"x": [1, {"y": null}]}') + SE,
    "arguments with marker-like text": SB + call("functions.echo:0", '{"s": "<|tool_call_end <| |> <|im_end|>"}') + SE,
    "section never closes": "Checking." + SB + call("functions.f:0", '{"a": 1}') + call("functions.g:1", '{"b": 2}'),
    "output ends inside arguments": SB + call("functions.f:0", "{}") + CB + "functions.g:1" + AB + '{"b": ',
    "output ends inside id": SB + CB + " functions.g:",
    "malformed json": SB + call("functions.f:0", "{'single': quotes}") + call("functions.f:1", "[1, 2]") + SE,
    "missing end marker": SB + CB + "functions.f:0" + AB + '{"a": 1}' + call("functions.g:1", "{}") + CB + "h:2" + AB
    + "{}" + SE,
    "missing argument marker": SB + CB + "functions.f:0" + CE + call("functions.g:1", "{}") + SE + "after",
    "junk between calls": SB + "thinking..." + call("functions.f:0", "{}") + " more junk " + AB + CE + SE,
    "content after section and a second section": "a" + SB + call("functions.f:0", "{}") + SE + "b" + SB
    + call("functions.f:1", "{}") + SE + "c",
    "empty section": "x" + SB + SE,
    "empty id": SB + call("  ", "{}") + SE,
    "dotted name": SB + call("functions.ns.tool:0", "{}") + SE,
}


def normalized(events):
    """Merge consecutive content deltas and argument fragments: streaming may cut them anywhere."""
    out = []
    for event in events:
        if isinstance(event, ContentDelta) and out and isinstance(out[-1], ContentDelta):
            out[-1] = ContentDelta(out[-1].text + event.text)
        elif (isinstance(event, ToolCallDelta) and event.id is None and out and isinstance(out[-1], ToolCallDelta)
              and out[-1].index == event.index):
            last = out[-1]
            out[-1] = ToolCallDelta(last.index, last.id, last.name, last.arguments + event.arguments)
        elif isinstance(event, ToolCallDelta) and event.id is None and event.arguments == "":
            continue
        else:
            out.append(event)
    return out


def stream(pieces):
    parser = ToolCallStreamParser()
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def check_invariants(events):
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert all(e.text for e in events if isinstance(e, ContentDelta))
    starts = [e for e in events if isinstance(e, ToolCallDelta) and e.id is not None]
    dones = [e for e in events if isinstance(e, ToolCallDone)]
    assert [e.index for e in starts] == [e.index for e in dones] == list(range(len(dones)))
    for done in dones:
        deltas = [e for e in events if isinstance(e, ToolCallDelta) and e.index == done.index]
        assert deltas[0].id == done.call.id and deltas[0].name == done.call.name
        assert "".join(d.arguments for d in deltas) == done.call.arguments
        position = events.index(done)
        assert all(events.index(d) < position for d in deltas)
        if done.call.error is None:
            assert isinstance(json.loads(done.call.arguments), dict)
    return content, [d.call for d in dones]


def test_one_call():
    assert parse_tool_calls(OUTPUTS["one call"]) == (
        None, [ToolCall("functions.get_weather:0", "get_weather", '{"city": "Beijing"}')])


def test_content_then_calls():
    content, calls = parse_tool_calls(OUTPUTS["content then two calls"])
    assert content == "Let me check both.\n"
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("functions.get_weather:0", "get_weather", {"city": "北京"}),
        ("functions.get_time:1", "get_time", {"tz": "Asia/Shanghai"})]
    assert calls[0].to_openai() == {"id": "functions.get_weather:0", "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}


def test_whitespace_is_stripped():
    content, calls = parse_tool_calls(OUTPUTS["whitespace around markers"])
    assert content == "Sure. \n" and calls == [ToolCall("functions.search:3", "search", '{"q": "a b"}')]


def test_lenient_variants():
    assert parse_tool_calls(OUTPUTS["singular section markers"])[1] == [ToolCall("functions.f:0", "f", "{}")]
    _, calls = parse_tool_calls(OUTPUTS["bare ids"])
    assert [(c.id, c.name, c.error) for c in calls] == [("get_weather:0", "get_weather", None), ("lookup:12", "lookup", None)]
    assert parse_tool_calls(OUTPUTS["dotted name"])[1][0].name == "ns.tool"
    assert [function_name(i) for i in ["functions.a:0", "a:1", "functions.a", "a:b", "x:²"]] == ["a", "a", "a", "a:b", "x:²"]


def test_no_section_is_all_content():
    assert parse_tool_calls(OUTPUTS["plain"]) == (OUTPUTS["plain"], [])
    assert parse_tool_calls("") == (None, [])
    assert parse_tool_calls(OUTPUTS["empty section"]) == ("x", [])


def test_marker_like_text_inside_arguments():
    _, calls = parse_tool_calls(OUTPUTS["arguments with marker-like text"])
    assert json.loads(calls[0].arguments) == {"s": "<|tool_call_end <| |> <|im_end|>"} and calls[0].error is None


def test_unclosed_section_keeps_complete_calls():
    content, calls = parse_tool_calls(OUTPUTS["section never closes"])
    assert content == "Checking." and [(c.name, c.error) for c in calls] == [("f", None), ("g", None)]
    _, calls = parse_tool_calls(OUTPUTS["output ends inside arguments"])
    assert calls[0].error is None
    assert calls[1].arguments == '{"b":' and "output ended before <|tool_call_end|>" in calls[1].error
    _, calls = parse_tool_calls(OUTPUTS["output ends inside id"])
    assert calls[0].id == "functions.g:" and "output ended before" in calls[0].error


def test_malformed_calls_are_surfaced():
    _, calls = parse_tool_calls(OUTPUTS["malformed json"])
    assert calls[0].arguments == "{'single': quotes}" and "not valid JSON" in calls[0].error
    assert "not a JSON object" in calls[1].error
    _, calls = parse_tool_calls(OUTPUTS["missing end marker"])
    assert calls[0].arguments == '{"a": 1}' and "missing <|tool_call_end|>" in calls[0].error
    assert calls[1] == ToolCall("functions.g:1", "g", "{}")
    assert calls[2].arguments == "{}" and "missing <|tool_call_end|>" in calls[2].error
    content, calls = parse_tool_calls(OUTPUTS["missing argument marker"])
    assert "missing <|tool_call_argument_begin|>" in calls[0].error and calls[0].arguments == ""
    assert calls[1].error is None and content == "after"
    _, calls = parse_tool_calls(OUTPUTS["empty id"])
    assert "empty id" in calls[0].error
    _, calls = parse_tool_calls(SB + call("functions.:0", "{}") + SE)
    assert calls[0].id == "functions.:0" and "names no function" in calls[0].error
    assert parse_tool_calls(OUTPUTS["junk between calls"])[1] == [ToolCall("functions.f:0", "f", "{}")]
    assert parse_tool_calls(OUTPUTS["content after section and a second section"])[0] == "abc"


def test_overlong_id_is_given_up():
    text = SB + CB + "x" * (MAX_ID_CHARS + 100) + AB + "{}" + CE + call("functions.ok:1", "{}") + SE
    _, calls = parse_tool_calls(text)
    assert len(calls) == 2 and "within 512 characters" in calls[0].error and len(calls[0].id) == MAX_ID_CHARS
    assert calls[1] == ToolCall("functions.ok:1", "ok", "{}")


@pytest.mark.parametrize("name", OUTPUTS)
def test_every_split_point_agrees_with_one_shot(name):
    text = OUTPUTS[name]
    whole = normalized(stream([text]))
    check_invariants(whole)
    for cut in range(len(text) + 1):
        assert normalized(stream([text[:cut], text[cut:]])) == whole, cut
    assert normalized(stream(list(text))) == whole


@pytest.mark.parametrize("name", OUTPUTS)
def test_one_shot_is_the_stream(name):
    events = stream(list(OUTPUTS[name]))
    content, calls = check_invariants(events)
    assert parse_tool_calls(OUTPUTS[name]) == (content or None, calls)


def test_streaming_deltas_arrive_early():
    parser = ToolCallStreamParser()
    assert parser.feed("Hello ") == [ContentDelta("Hello ")]
    assert parser.feed("<|tool_calls") == []  # could be a marker: held back
    assert parser.feed("_section_begin|>" + CB + "functions.f:0") == []
    assert parser.feed(AB) == [ToolCallDelta(0, "functions.f:0", "f", "")]
    assert parser.feed(' {"a": ') == [ToolCallDelta(0, None, None, '{"a":')]  # trailing space held
    assert parser.feed("1}") == [ToolCallDelta(0, None, None, " 1}")]
    assert parser.feed(CE) == [ToolCallDone(0, ToolCall("functions.f:0", "f", '{"a": 1}'))]
    assert parser.finish() == []


def test_round_trip_through_the_template():
    # What the template writes for an assistant turn with calls parses back to the same calls.
    calls = [{"id": "functions.get_weather:0", "function": {"name": "get_weather", "arguments": {"city": "北京"}}},
             {"id": "functions.note:1", "function": {"name": "note", "arguments": '{"text": "a\\nb"}'}}]
    messages = normalize_messages([{"role": "assistant", "content": "On it.", "tool_calls": calls}])
    rendered = render_reference(messages, add_generation_prompt=False)
    turn = rendered.split("<|im_assistant|>assistant<|im_middle|>")[1].removesuffix("<|im_end|>")
    content, parsed = parse_tool_calls(turn)
    assert content == "On it."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in parsed] == [
        ("functions.get_weather:0", "get_weather", {"city": "北京"}), ("functions.note:1", "note", {"text": "a\nb"})]


def test_hostile_fuzz_never_raises_and_streams_alike():
    rng = random.Random(1234)
    pieces = [*MARKERS, *(m[: rng.randint(1, len(m) - 1)] for m in MARKERS for _ in range(2)),
              "functions.f:0", "get:1", "{", "}", '"a"', ":", " ", "\n", "<", "|", ">", "<|", "|>", "你", "😀",
              '{"x": 1}', "[", "]", "\\", '"', "null", "x" * 40]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        one_shot = stream([text])
        content, calls = check_invariants(one_shot)
        assert parse_tool_calls(text) == (content or None, calls)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        streamed = stream(parts)
        check_invariants(streamed)
        assert normalized(streamed) == normalized(one_shot), text


def test_huge_arguments_stream_linearly():
    # A long argument body fed in small pieces: every fragment is emitted, nothing is rescanned forever.
    body = '{"data": "' + "y" * 200_000 + '"}'
    parser = ToolCallStreamParser()
    events = parser.feed(SB + CB + "functions.save:0" + AB)
    for i in range(0, len(body), 7):
        events += parser.feed(body[i : i + 7])
    events += parser.feed(CE + SE) + parser.finish()
    assert check_invariants(events)[1] == [ToolCall("functions.save:0", "save", body)]


def test_calls_whose_id_never_completed_are_marked():
    for text in (OUTPUTS["missing argument marker"], OUTPUTS["output ends inside id"],
                 SB + CB + "x" * (MAX_ID_CHARS + 1) + AB + "{}" + CE + SE):
        first = parse_tool_calls(text)[1][0]
        assert not first.id_complete and not first.is_addressable, text
    _, calls = parse_tool_calls(OUTPUTS["missing end marker"])
    assert all(c.id_complete and c.is_addressable for c in calls)
    _, (nameless,) = parse_tool_calls(SB + call("functions.:0", "{}") + SE)
    assert nameless.id_complete and not nameless.is_addressable


def test_arguments_object_whatever_else_is_wrong():
    _, calls = parse_tool_calls(OUTPUTS["missing end marker"])
    assert calls[0].error and calls[0].arguments_object() == {"a": 1}
    _, calls = parse_tool_calls(OUTPUTS["malformed json"])
    assert [c.arguments_object() for c in calls] == [None, None]
    assert ToolCall("f:0", "f", '{"a": [1, {"b": null}]}').arguments_object() == {"a": [1, {"b": None}]}
