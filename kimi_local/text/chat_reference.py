"""The Kimi-K2-Instruct chat format written out in plain Python.

This is the reference the bundled jinja template (`templates/kimi_k2.jinja`) is tested against: both must
produce the same string for every conversation. Turns follow each other with no newline:

    [<|im_system|>tool_declare<|im_middle|>{tools as JSON}<|im_end|>]         only with tools
    <|im_system|>system<|im_middle|>{default system prompt}<|im_end|>            unless messages[0] is system
    <|im_user|>{name or "user"}<|im_middle|>{text}<|im_end|>
    <|im_assistant|>{name or "assistant"}<|im_middle|>{text}[tool calls]<|im_end|>
    <|im_system|>{name or "tool"}<|im_middle|>## Return of {tool_call_id}\\n{text}<|im_end|>
    [<|im_assistant|>assistant<|im_middle|>]                                    the generation prompt

with tool calls as `<|tool_calls_section_begin|>` + (`<|tool_call_begin|>{id}<|tool_call_argument_begin|>
{arguments}<|tool_call_end|>`)* + `<|tool_calls_section_end|>`. JSON is `json.dumps(x, ensure_ascii=False)`,
which is what the `tojson` filter of HF's chat-template environment (and ours) produces.
"""

from __future__ import annotations

import json

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
MEDIA_PLACEHOLDER = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"
ROLE_MARKERS = {"user": "<|im_user|>", "assistant": "<|im_assistant|>"}  # everything else: <|im_system|>


def to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _content(message: dict) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part.get("type") == "image" or "image" in part or "image_url" in part:
            pieces.append(MEDIA_PLACEHOLDER)
        else:
            pieces.append(str(part.get("text", "")))
    return "".join(pieces)


def _tool_calls(message: dict) -> str:
    out = ["<|tool_calls_section_begin|>"]
    for call in message["tool_calls"]:
        arguments = call["function"]["arguments"]
        arguments = arguments if isinstance(arguments, str) else to_json(arguments)
        out.append(f"<|tool_call_begin|>{call['id']}<|tool_call_argument_begin|>{arguments}<|tool_call_end|>")
    out.append("<|tool_calls_section_end|>")
    return "".join(out)


def render_reference(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True) -> str:
    """Kimi-K2-Instruct prompt text for normalized messages (see `messages.normalize_messages`)."""
    out = []
    if tools:
        out.append(f"<|im_system|>tool_declare<|im_middle|>{to_json(tools)}<|im_end|>")
    if not messages or messages[0]["role"] != "system":
        out.append(f"<|im_system|>system<|im_middle|>{DEFAULT_SYSTEM_PROMPT}<|im_end|>")
    for message in messages:
        role = message["role"]
        out.append(ROLE_MARKERS.get(role, "<|im_system|>") + (message.get("name") or role) + "<|im_middle|>")
        if role == "tool":
            out.append(f"## Return of {message.get('tool_call_id')}\n")
        out.append(_content(message))
        if role == "assistant" and message.get("tool_calls"):
            out.append(_tool_calls(message))
        out.append("<|im_end|>")
    if add_generation_prompt:
        out.append("<|im_assistant|>assistant<|im_middle|>")
    return "".join(out)
