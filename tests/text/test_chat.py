"""Chat template: the bundled jinja file against hand-written expected strings (KIMI_FACTS section 5) and
against the pure-Python reference renderer; template lookup; message validation; the sandbox."""

from __future__ import annotations

import json
import shutil

import pytest

from kimi_local.text.chat import BUILTIN_SOURCE, ChatFormat
from kimi_local.text.chat_reference import DEFAULT_SYSTEM_PROMPT, render_reference
from kimi_local.text.files import CONFIG_FILE, TEMPLATE_FILE
from kimi_local.text.messages import normalize_messages, normalize_tools

SYSTEM = f"<|im_system|>system<|im_middle|>{DEFAULT_SYSTEM_PROMPT}<|im_end|>"
GEN = "<|im_assistant|>assistant<|im_middle|>"
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
WEATHER_CALL = {"id": "functions.get_weather:0", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}

CONVERSATIONS = {
    "single user": ([{"role": "user", "content": "Hi"}], None),
    "system": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None),
    "multi-turn": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 你好"},
                    {"role": "user", "content": "Weather?\nIn Paris."}], None),
    "tools": ([{"role": "user", "content": "Weather in Beijing?"}], [WEATHER_TOOL]),
    "tool call and result": (
        [{"role": "system", "content": "sys"},
         {"role": "user", "content": "Weather in Beijing?"},
         {"role": "assistant", "content": "Let me check.", "tool_calls": [WEATHER_CALL]},
         {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": '{"temp": 26}'},
         {"role": "assistant", "content": "It is 26 degrees."}],
        [WEATHER_TOOL]),
    "two calls, dict arguments, no content": (
        [{"role": "user", "content": "Both cities"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "functions.get_weather:0", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": "北京", "days": [1, 2]}}},
             {"id": "functions.get_weather:1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
         {"role": "tool", "tool_call_id": "functions.get_weather:0", "name": "get_weather", "content": "sunny"},
         {"role": "tool", "tool_call_id": "functions.get_weather:1",
          "content": [{"type": "text", "text": "rain"}, {"type": "text", "text": "y"}]}],
        [WEATHER_TOOL]),
    "names and list content": (
        [{"role": "user", "name": "alice", "content": [{"type": "text", "text": "part one, "}, "part two"]},
         {"role": "assistant", "name": "kimi", "content": ""}], None),
    "empty": ([], None),
    "developer role and unicode": ([{"role": "developer", "content": "Règles: 😀"},
                                    {"role": "user", "content": "  spaces  \n\n"}], []),
}


def test_expected_strings_from_the_facts(chat):
    messages, tools = CONVERSATIONS["tool call and result"]
    expected = (
        "<|im_system|>tool_declare<|im_middle|>" + json.dumps([WEATHER_TOOL], ensure_ascii=False) + "<|im_end|>"
        "<|im_system|>system<|im_middle|>sys<|im_end|>"
        "<|im_user|>user<|im_middle|>Weather in Beijing?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>Let me check.<|tool_calls_section_begin|><|tool_call_begin|>"
        'functions.get_weather:0<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|>'
        "<|tool_calls_section_end|><|im_end|>"
        '<|im_system|>tool<|im_middle|>## Return of functions.get_weather:0\n{"temp": 26}<|im_end|>'
        "<|im_assistant|>assistant<|im_middle|>It is 26 degrees.<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>"
    )
    assert chat.render(messages, tools) == expected
    assert chat.render([{"role": "user", "content": "Hi"}]) == SYSTEM + "<|im_user|>user<|im_middle|>Hi<|im_end|>" + GEN
    assert chat.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == \
        SYSTEM + "<|im_user|>user<|im_middle|>Hi<|im_end|>"
    assert chat.render([]) == SYSTEM + GEN


def test_tool_call_details(chat):
    messages, tools = CONVERSATIONS["two calls, dict arguments, no content"]
    text = chat.render(messages, tools)
    assert ('<|im_assistant|>assistant<|im_middle|><|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
            '<|tool_call_argument_begin|>{"city": "北京", "days": [1, 2]}<|tool_call_end|>') in text
    assert "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\nsunny<|im_end|>" in text
    assert "<|im_system|>tool<|im_middle|>## Return of functions.get_weather:1\nrainy<|im_end|>" in text


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_equals_reference(chat, name, add_generation_prompt):
    messages, tools = CONVERSATIONS[name]
    expected = render_reference(normalize_messages(messages), normalize_tools(tools), add_generation_prompt)
    assert chat.render(messages, tools, add_generation_prompt) == expected


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_encoding_is_the_rendered_text_with_markers(chat, demo_tok, name):
    # For conversations without control-token text in them, the guard changes nothing: the ids are the
    # rendered text encoded with special tokens allowed, as Kimi's own tokenizer would.
    messages, tools = CONVERSATIONS[name]
    ids = chat.encode_messages(messages, tools)
    assert ids == demo_tok.encode(chat.render(messages, tools), allow_special=True)
    assert ids[-3:] == [demo_tok.token_id("<|im_assistant|>"), *demo_tok.encode("assistant"),
                        demo_tok.token_id("<|im_middle|>")][-3:]


def test_missing_tool_call_ids_are_kimi_style(chat):
    calls = [{"function": {"name": "a", "arguments": "{}"}}, {"id": "keep:7", "function": {"name": "b"}},
             {"function": {"name": "c", "arguments": "{}"}}]
    normalized = normalize_messages([{"role": "assistant", "tool_calls": calls}])[0]["tool_calls"]
    assert [c["id"] for c in normalized] == ["functions.a:0", "keep:7", "functions.c:2"]
    assert normalized[1]["function"]["arguments"] == {}
    assert "<|tool_call_begin|>keep:7<|tool_call_argument_begin|>{}<|tool_call_end|>" in chat.render(
        [{"role": "assistant", "tool_calls": calls}])


def test_caller_messages_are_not_modified(chat):
    messages = [{"role": "developer", "content": ["x"]}, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]
    before = json.dumps(messages)
    chat.encode_messages(messages)
    assert json.dumps(messages) == before


@pytest.mark.parametrize(
    "messages, message",
    [
        ({"role": "user"}, "messages must be a list"),
        (["hi"], r"messages\[0\]: a message must be an object"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\]\.role"),
        ([{"content": "x"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": 5}], r"messages\[0\]\.content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "text-only"),
        ([{"role": "user", "content": [{"type": "text"}]}], r"content\[0\]\.text"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "only assistant"),
        ([{"role": "tool", "content": "x"}], r"messages\[0\]\.tool_call_id"),
        ([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}], r"tool_calls\[0\]\.function\.name"),
        ([{"role": "assistant", "tool_calls": [{"type": "function"}]}], r"tool_calls\[0\]\.function"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}], "arguments"),
        ([{"role": "user", "content": "x", "name": 3}], r"messages\[0\]\.name"),
        ([{"role": "user", "content": "x", "extra": object()}], r"messages\[0\]\.extra"),
    ],
)
def test_bad_messages_are_named(chat, messages, message):
    with pytest.raises(ValueError, match=message):
        chat.render(messages)


@pytest.mark.parametrize(
    "tools, message",
    [({"a": 1}, "tools must be a list"), ([{"type": "retrieval"}], r"tools\[0\]\.type"),
     ([{"type": "function", "function": {}}], r"tools\[0\]\.function\.name")],
)
def test_bad_tools_are_named(chat, tools, message):
    with pytest.raises(ValueError, match=message):
        chat.render([{"role": "user", "content": "x"}], tools)


def test_pydantic_like_objects_are_accepted(chat):
    class Message:
        def model_dump(self, exclude_none=False):
            return {"role": "user", "content": "from an object"}

    assert chat.render([Message()]) == chat.render([{"role": "user", "content": "from an object"}])


# -- where the template comes from -----------------------------------------------------------------------


@pytest.fixture
def ckpt(demo_dir, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(demo_dir, path)
    return path


def test_template_lookup_order(ckpt, demo_tok):
    assert ChatFormat.from_dir(ckpt, demo_tok).source.endswith(TEMPLATE_FILE)
    config = json.loads((ckpt / CONFIG_FILE).read_text())
    config["chat_template"] = "CONFIG{% for m in messages %}[{{ m.content }}]{% endfor %}"
    (ckpt / CONFIG_FILE).write_text(json.dumps(config))
    (ckpt / TEMPLATE_FILE).write_text("FILE{{ messages | length }}")
    assert ChatFormat.from_dir(ckpt, demo_tok).render([{"role": "user", "content": "x"}]) == "FILE1"
    (ckpt / TEMPLATE_FILE).unlink()
    chat = ChatFormat.from_dir(ckpt, demo_tok)
    assert chat.render([{"role": "user", "content": "x"}]) == "CONFIG[x]"
    assert chat.source.endswith("tokenizer_config.json (chat_template)")
    config["chat_template"] = [{"name": "default", "template": "NAMED"}]
    (ckpt / CONFIG_FILE).write_text(json.dumps(config))
    assert ChatFormat.from_dir(ckpt, demo_tok).render([]) == "NAMED"
    del config["chat_template"]
    (ckpt / CONFIG_FILE).write_text(json.dumps(config))
    builtin = ChatFormat.from_dir(ckpt, demo_tok)
    assert builtin.source == BUILTIN_SOURCE
    assert builtin.render([]) == SYSTEM + GEN


def test_hf_template_conventions(demo_tok):
    # trim_blocks/lstrip_blocks, loop controls, tojson without HTML escaping, raise_exception, bos/eos names.
    template = (
        "{% for m in messages %}\n  {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "{{ m | tojson }}|{% endfor %}{{ bos_token }}{{ eos_token }}"
    )
    chat = ChatFormat(demo_tok, template, "test")
    out = chat.render([{"role": "user", "content": "<a & b>"}] * 3)
    assert out == '{"role": "user", "content": "<a & b>"}|' * 2 + "[BOS][EOS]"
    failing = ChatFormat(demo_tok, "{{ raise_exception('no system role allowed') }}", "strict.jinja")
    with pytest.raises(ValueError, match="strict.jinja: chat template failed: no system role allowed"):
        failing.render([])


def test_bad_template_is_named(demo_tok):
    with pytest.raises(ValueError, match=r"broken.jinja: chat template does not compile \(line 1\)"):
        ChatFormat(demo_tok, "{% for %}", "broken.jinja")


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.__class__.__mro__ }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ messages.append(1) }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_templates_run_in_a_sandbox(demo_tok, template):
    with pytest.raises(ValueError, match="chat template failed"):
        ChatFormat(demo_tok, template, "evil.jinja").render([{"role": "user", "content": "x"}])
