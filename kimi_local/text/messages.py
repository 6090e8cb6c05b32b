"""Checking and normalising OpenAI-style chat messages and tool declarations before they meet a template.

Templates come from checkpoints and must not see anything surprising: every message becomes a plain dict of
JSON types (pydantic objects are dumped, keys with a None value dropped, as transformers does), roles are
checked, content is a string or a list of text parts, and assistant tool calls get the shape the template
reads (`id`, `type`, `function.name`, `function.arguments` as a string or an object).

Kimi's tool-call ids are `functions.NAME:IDX`, IDX counting the calls of the conversation; the template
echoes the id back (`<|tool_call_begin|>{id}` and `## Return of {id}`), so given ids are kept exactly and a
missing one is made in that form. Bad input raises ValueError naming the message and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
TEXT_PART_TYPES = ("text", "input_text", "output_text")


def plain_data(value: Any, where: str) -> Any:
    """A copy made of dict/list/str/int/float/bool/None only (what a sandboxed template may see)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if callable(getattr(value, "model_dump", None)):  # pydantic models, e.g. the openai client's types
        return plain_data(value.model_dump(exclude_none=True), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            if item is not None:
                out[key] = plain_data(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [plain_data(item, f"{where}[{i}]") for i, item in enumerate(value)]
    for kind in (str, bool, int, float):  # subclasses (enums, numpy scalars) back to the base type
        if isinstance(value, kind):
            return kind(value)
    raise ValueError(f"{where}: unsupported value of type {type(value).__name__}")


def _content(content: Any, where: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}: content must be a string or a list of text parts, got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict):
            raise ValueError(f"{where}[{j}]: a content part must be an object, got {type(part).__name__}")
        kind = part.get("type", "text")
        if kind in TEXT_PART_TYPES and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind in TEXT_PART_TYPES:
            raise ValueError(f"{where}[{j}].text: a text part needs a string 'text'")
        else:
            raise ValueError(f"{where}[{j}].type: {kind!r} parts are not supported; Kimi-K2 is a text-only model")
    return parts


def _tool_calls(calls: Any, where: str, counter: list[int]) -> list[dict]:
    if not isinstance(calls, list):
        raise ValueError(f"{where}: tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise ValueError(f"{at}.function: a tool call needs a 'function' object")
        function = call["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{at}.function.name: must be a non-empty string")
        arguments = function.get("arguments", {})
        if not isinstance(arguments, (str, dict, list)):
            raise ValueError(f"{at}.function.arguments: must be a JSON string or an object")
        call_id = call.get("id")
        if call_id is None or call_id == "":
            call_id = f"functions.{name}:{counter[0]}"
        elif not isinstance(call_id, str):
            raise ValueError(f"{at}.id: must be a string")
        counter[0] += 1
        out.append({**call, "id": call_id, "type": call.get("type", "function"),
                    "function": {**function, "name": name, "arguments": arguments}})
    return out


def normalize_messages(messages: Any) -> list[dict]:
    """Validated plain-dict copies of `messages` (the caller's objects are never modified)."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list, got {type(messages).__name__}")
    out = []
    counter = [0]  # running index of tool calls in the conversation, for missing ids
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        message = plain_data(message, where)
        if not isinstance(message, dict):
            raise ValueError(f"{where}: a message must be an object")
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role  # a list or dict is unhashable
        if role not in ROLES:
            raise ValueError(f"{where}.role: must be one of {', '.join(ROLES)}; got {message.get('role')!r}")
        message["role"] = role
        if "content" in message:
            message["content"] = _content(message["content"], f"{where}.content")
        if "name" in message and not isinstance(message["name"], str):
            raise ValueError(f"{where}.name: must be a string")
        if "tool_calls" in message:
            if role != "assistant":
                raise ValueError(f"{where}.tool_calls: only assistant messages carry tool calls")
            message["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls", counter)
        if role == "tool" and not (isinstance(message.get("tool_call_id"), str) and message["tool_call_id"]):
            raise ValueError(f"{where}.tool_call_id: a tool result must name the call it answers")
        out.append(message)
    return out


def normalize_tools(tools: Any) -> list[dict] | None:
    """Validated plain copies of OpenAI tool declarations ({"type": "function", "function": {...}}), or None."""
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise ValueError(f"tools must be a list, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        tool = plain_data(tool, f"tools[{i}]")
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"tools[{i}].type: only 'function' tools are supported")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ValueError(f"tools[{i}].function.name: a tool needs a function with a non-empty name")
        out.append(tool)
    return out or None
