"""A conversation plus tools and a tool choice -> the prompt ids the engine sees, and how to read the reply.

Both protocols end here (the Anthropic layer first converts its blocks to OpenAI-style messages), so one
conversation gives the same prompt whichever API it came through. A final assistant message can be continued
instead of answered (Anthropic's prefill, vLLM's `continue_final_message`): the prompt then ends inside that
turn, without its <|im_end|> and without a new generation prompt.

Tool choice is enforced by what the reply must start with, appended after the generation prompt:
- "auto": tools are declared, the model decides; tool-call sections in the reply are parsed;
- "none": tools are not declared and nothing is parsed, so the reply is plain text;
- "required": the reply starts inside a tool-call section (`<|tool_calls_section_begin|><|tool_call_begin|>`);
- a named function: the reply starts with that call's id and argument marker
  (`...<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>`), IDX counting the calls of the
  conversation as Kimi's ids do; the model writes only the arguments.
The forced prefix is fed to the tool-call parser before the generated text, so the reply parses as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimi_local.server.errors import bad_request
from kimi_local.text.chat import ChatFormat
from kimi_local.text.tool_calls import ARGUMENT_BEGIN, CALL_BEGIN, SECTION_BEGIN

TOOL_SECTION_BEGIN = SECTION_BEGIN[0]


@dataclass(frozen=True)
class ChatPrompt:
    prompt_ids: list[int]
    forced_text: str  # what the reply is made to start with (already part of prompt_ids)
    parse_tools: bool


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    names = []
    for tool in tools or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def count_tool_calls(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("tool_calls") or []) for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def _open_final_turn(chat_format: ChatFormat, messages: list[dict[str, Any]], prompt_ids: list[int]) -> list[int]:
    """The prompt without the end-of-turn marker that closes the final (assistant) message."""
    last = messages[-1] if messages else {}
    if not isinstance(last, dict) or last.get("role") != "assistant" or last.get("tool_calls"):
        raise bad_request("only a final assistant message without tool calls can be continued", param="messages")
    end = chat_format.tokenizer.token_id("<|im_end|>")
    if not prompt_ids or prompt_ids[-1] != end:
        raise bad_request("the chat template does not end the final assistant message with <|im_end|>; "
                          "it cannot be continued", param="messages")
    return prompt_ids[:-1]


def build_chat_prompt(chat_format: ChatFormat, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                      tool_choice: str | dict | None, continue_final: bool = False, tools_param: str = "tools",
                      choice_param: str = "tool_choice") -> ChatPrompt:
    """Prompt ids and reply handling; raises ApiError 400 for a bad conversation or tool choice.
    `continue_final`: the last message is a partial assistant turn that the reply continues."""
    tokenizer = chat_format.tokenizer
    tools = tools or None
    if tool_choice is None:
        tool_choice = "auto"
    named = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if tool_choice not in ("auto", "none", "required") and named is None:
        raise bad_request(f"unsupported tool_choice {tool_choice!r}", param=choice_param)
    if tools is None and tool_choice != "auto" and tool_choice != "none":
        raise bad_request("tool_choice requires tools to be given", param=choice_param)
    if named is not None and named not in tool_names(tools):
        raise bad_request(f"tool_choice names function {named!r}, which is not among the tools", param=choice_param)
    declared = None if tool_choice == "none" else tools
    if continue_final and (tool_choice == "required" or named is not None):
        raise bad_request("a forced tool choice cannot continue a partial assistant turn", param=choice_param)
    try:
        prompt_ids = chat_format.encode_messages(messages, declared, add_generation_prompt=not continue_final)
    except ValueError as exc:
        message = str(exc)
        param = tools_param if message.startswith("tools") else "messages"
        raise bad_request(message, param=param) from None
    if continue_final:
        prompt_ids = _open_final_turn(chat_format, messages, prompt_ids)

    forced_text = ""
    if tool_choice == "required":
        forced_text = TOOL_SECTION_BEGIN + CALL_BEGIN
    elif named is not None:
        forced_text = f"{TOOL_SECTION_BEGIN}{CALL_BEGIN}functions.{named}:{count_tool_calls(messages)}{ARGUMENT_BEGIN}"
    forced_ids: list[int] = []
    if forced_text:
        forced_ids = [tokenizer.token_id(TOOL_SECTION_BEGIN), tokenizer.token_id(CALL_BEGIN)]
        if named is not None:
            forced_ids += tokenizer.encode(f"functions.{named}:{count_tool_calls(messages)}")
            forced_ids.append(tokenizer.token_id(ARGUMENT_BEGIN))
    return ChatPrompt(prompt_ids + forced_ids, forced_text, parse_tools=declared is not None)
