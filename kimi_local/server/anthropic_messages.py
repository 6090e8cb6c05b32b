"""Anthropic conversations -> the OpenAI-style messages and tools the chat format renders.

Both APIs then share one prompt path (`chat_prompt`), so an Anthropic conversation renders exactly like the
same conversation sent as OpenAI messages:

- `system` (a string or text blocks) -> a leading system message (blocks joined with a newline);
- a user turn's `text` blocks -> one user message; its `tool_result` blocks -> `tool` messages (in their
  order, each answering `tool_use_id`; text-block content joined; `is_error` results prefixed "Error: ");
- an assistant turn's `text` blocks -> content, its `tool_use` blocks -> `tool_calls` whose arguments are the
  `input` object (the template writes it as JSON) and whose ids are kept: Kimi's own `functions.NAME:IDX` ids
  travel out as `tool_use` ids and come back unchanged, as the template needs;
- `thinking` / `redacted_thinking` blocks of earlier turns are dropped (Kimi-K2-Instruct does not think);
  images and documents are refused (a text-only model);
- tools: `{name, description, input_schema}` -> `{"type": "function", "function": {name, description,
  parameters}}`; tool_choice auto / any / tool / none -> auto / required / the named function / none.
Problems are 400s naming the block, e.g. `messages.1.content.0.type`.
"""

from __future__ import annotations

from typing import Any

from kimi_local.server.anthropic_protocol import InputMessage, ToolChoice, ToolParam, PromptFields
from kimi_local.server.errors import bad_request

DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def system_text(system: str | list | None) -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return system
    return "\n".join(block.text for block in system)


def _result_text(block: dict[str, Any], where: str) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"tool_result content blocks must be text blocks, got {kind!r}",
                                  param=f"{where}.content.{j}")
            parts.append(part["text"])
        text = "\n".join(parts)
    else:
        raise bad_request("tool_result content must be a string or a list of text blocks", param=f"{where}.content")
    return f"Error: {text}" if block.get("is_error") else text


def _text(block: dict[str, Any], where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise bad_request("a text block needs a string 'text'", param=f"{where}.text")
    return block["text"]


def _user_turn(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush_text() -> None:
        if texts:
            out.append({"role": "user", "content": "\n".join(texts)})
            texts.clear()

    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_result":
            flush_text()
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise bad_request("a tool_result block needs its 'tool_use_id'", param=f"{at}.tool_use_id")
            out.append({"role": "tool", "tool_call_id": tool_use_id, "content": _result_text(block, at)})
        elif isinstance(kind, str) and kind in DROPPED_BLOCKS:
            continue
        else:
            raise bad_request(f"{kind!r} content blocks are not supported in user turns (text-only model)",
                              param=f"{at}.type")
    flush_text()
    return out


def _assistant_turn(blocks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            name, call_id, arguments = block.get("name"), block.get("id"), block.get("input", {})
            if not isinstance(name, str) or not name:
                raise bad_request("a tool_use block needs a 'name'", param=f"{at}.name")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request("a tool_use block needs an 'id'", param=f"{at}.id")
            if not isinstance(arguments, dict):
                raise bad_request("tool_use input must be an object", param=f"{at}.input")
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif isinstance(kind, str) and kind in DROPPED_BLOCKS:
            continue
        else:
            raise bad_request(f"{kind!r} content blocks are not supported in assistant turns", param=f"{at}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def to_openai_messages(req: PromptFields) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = system_text(req.system)
    if system is not None:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(req.messages):
        out += _turn(message, f"messages.{i}.content")
    return out


def _turn(message: InputMessage, where: str) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "user":
        return _user_turn(message.content, where)
    return [_assistant_turn(message.content, where)]


def to_openai_tools(tools: list[ToolParam] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise bad_request(f"server tool type {tool.type!r} is not supported; declare client tools with "
                              "name, description and input_schema", param=f"tools.{i}.type")
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function = {"name": tool.name, "description": tool.description, "parameters": tool.input_schema}
        out.append({"type": "function", "function": function})
    return out


def to_openai_tool_choice(choice: ToolChoice | None) -> str | dict | None:
    if choice is None:
        return None
    if choice.type == "tool":
        if not choice.name:
            raise bad_request("tool_choice of type 'tool' needs the tool's 'name'", param="tool_choice.name")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]
