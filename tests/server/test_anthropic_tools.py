"""A full Anthropic tool round trip through the scripted model: Kimi's tool call comes out as a `tool_use`
block (id kept, streamed as input_json_delta), the `tool_result` goes back in, and the model sees exactly the
prompt the OpenAI API builds for the same conversation."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.server.conftest import TOOL_PREAMBLE, WEATHER_ARGS, WEATHER_RESULT_REPLY

TOOLS = [{
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                  "parameters": t["input_schema"]}} for t in TOOLS]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL_ID = "functions.get_weather:0"


@pytest.fixture(scope="module")
def client(scripted_server):
    return anthropic.Anthropic(base_url=scripted_server.url, api_key="x", max_retries=0, timeout=60)


def test_tool_use_block(client):
    m = client.messages.create(model="k", max_tokens=200, messages=QUESTION, tools=TOOLS)
    assert m.stop_reason == "tool_use"
    text, tool = m.content
    assert text.type == "text" and text.text == TOOL_PREAMBLE
    assert (tool.type, tool.id, tool.name, tool.input) == ("tool_use", CALL_ID, "get_weather", WEATHER_ARGS)


def test_tool_use_streamed_as_input_json_delta(client, scripted_server):
    with client.messages.stream(model="k", max_tokens=200, messages=QUESTION, tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].id == CALL_ID and final.content[1].input == WEATHER_ARGS
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    assert json.loads(partial) == WEATHER_ARGS
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(s.index, s.content_block.type) for s in starts] == [(0, "text"), (1, "tool_use")]
    assert starts[1].content_block.input == {}


def test_tool_round_trip_renders_like_the_openai_api(client, scripted_server):
    first = client.messages.create(model="k", max_tokens=200, messages=QUESTION, tools=TOOLS)
    conversation = QUESTION + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": CALL_ID, "content": "sunny, 24 C"}]},
    ]
    m = client.messages.create(model="k", max_tokens=200, messages=conversation, tools=TOOLS)
    assert m.stop_reason == "end_turn" and [b.type for b in m.content] == ["text"]
    assert m.content[0].text == WEATHER_RESULT_REPLY
    anthropic_prompt = scripted_server.engine.model.prompts[-1]

    oa = openai.OpenAI(base_url=scripted_server.url + "/v1", api_key="x", max_retries=0)
    first_oa = oa.chat.completions.create(model="k", messages=QUESTION, tools=OPENAI_TOOLS).choices[0].message
    oa_conversation = QUESTION + [first_oa.model_dump(exclude_none=True),
                                  {"role": "tool", "tool_call_id": CALL_ID, "content": "sunny, 24 C"}]
    r = oa.chat.completions.create(model="k", messages=oa_conversation, tools=OPENAI_TOOLS)
    assert r.choices[0].message.content == WEATHER_RESULT_REPLY
    assert scripted_server.engine.model.prompts[-1] == anthropic_prompt
    text = scripted_server.state.tokenizer.decode(anthropic_prompt)
    assert f"## Return of {CALL_ID}\nsunny, 24 C" in text


def test_tool_choice_tool_any_and_none(client, scripted_server):
    hello = [{"role": "user", "content": "Hello!"}]
    m = client.messages.create(model="k", max_tokens=200, messages=hello, tools=TOOLS,
                               tool_choice={"type": "tool", "name": "get_weather"})
    (tool,) = m.content
    assert (tool.id, tool.input, m.stop_reason) == (CALL_ID, WEATHER_ARGS, "tool_use")
    m = client.messages.create(model="k", max_tokens=200, messages=hello, tools=TOOLS, tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use" and m.content[-1].name == "get_weather"
    m = client.messages.create(model="k", max_tokens=200, messages=QUESTION, tools=TOOLS, tool_choice={"type": "none"})
    assert m.stop_reason == "end_turn" and all(b.type == "text" for b in m.content)
    prompt = scripted_server.state.tokenizer.decode(scripted_server.engine.model.prompts[-1])
    assert "tool_declare" not in prompt


def test_error_results_and_unknown_tool_choice(client, scripted_server):
    conversation = QUESTION + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": CALL_ID, "name": "get_weather",
                                           "input": WEATHER_ARGS}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": CALL_ID, "is_error": True,
                                      "content": [{"type": "text", "text": "service down"}]},
                                     {"type": "text", "text": "Try again later."}]},
    ]
    count = client.messages.count_tokens(model="k", messages=conversation, tools=TOOLS)
    expected = scripted_server.state.chat_format.encode_messages(
        QUESTION + [{"role": "assistant", "content": "", "tool_calls": [
            {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": WEATHER_ARGS}}]},
            {"role": "tool", "tool_call_id": CALL_ID, "content": "Error: service down"},
            {"role": "user", "content": "Try again later."}], OPENAI_TOOLS)
    assert count.input_tokens == len(expected)
    r = httpx.post(scripted_server.url + "/v1/messages", json={
        "model": "k", "max_tokens": 5, "messages": QUESTION, "tools": TOOLS,
        "tool_choice": {"type": "tool", "name": "get_time"}})
    assert r.status_code == 400 and "get_time" in r.json()["error"]["message"]


def cut_lengths(scripted_server) -> tuple[int, int]:
    """Token limits for a forced call ("any") cut inside its id, and cut just before <|tool_call_end|>."""
    tokenizer = scripted_server.state.tokenizer
    id_tokens = len(tokenizer.encode(CALL_ID))
    return id_tokens - 1, id_tokens + 1 + len(tokenizer.encode(json.dumps(WEATHER_ARGS)))


def test_call_cut_inside_its_id_is_not_a_tool_use(client, scripted_server):
    """The reviewer's repro: tool_choice any with a tiny max_tokens used to send a tool_use whose id and name
    were the half-written id, with input {}."""
    inside_id, _ = cut_lengths(scripted_server)
    m = client.messages.create(model="k", max_tokens=inside_id, messages=QUESTION, tools=TOOLS,
                               tool_choice={"type": "any"})
    assert m.stop_reason == "max_tokens" and m.content == []
    with client.messages.stream(model="k", max_tokens=inside_id, messages=QUESTION, tools=TOOLS,
                                tool_choice={"type": "any"}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.content == []
    assert not [e for e in events if e.type == "content_block_start"]


def test_call_with_complete_arguments_but_no_end_marker_keeps_them(client, scripted_server):
    _, before_end = cut_lengths(scripted_server)
    m = client.messages.create(model="k", max_tokens=before_end, messages=QUESTION, tools=TOOLS,
                               tool_choice={"type": "any"})
    (tool,) = m.content
    assert (m.stop_reason, tool.id, tool.name, tool.input) == ("max_tokens", CALL_ID, "get_weather", WEATHER_ARGS)
    with client.messages.stream(model="k", max_tokens=before_end, messages=QUESTION, tools=TOOLS,
                                tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert [(b.type, b.id, b.input) for b in final.content] == [("tool_use", CALL_ID, WEATHER_ARGS)]
