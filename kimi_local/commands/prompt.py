"""`kimi-local prompt`: show the exact prompt text and token ids a conversation becomes.

The debugging aid serving engines offer: it renders the messages (and tools) with the checkpoint's own chat
template and tokenizer, exactly as the server would before generating, and prints the text and the ids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kimi_local.commands.common import add_model_argument, load_config, resolve_model_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prompt",
        help="print the rendered chat prompt and its token ids",
        description="Render OpenAI-style messages (and tool declarations) with the model's chat template and "
        "tokenizer, and print the prompt text and its token ids. The messages file holds a JSON list of "
        'messages, or a request body {"messages": [...], "tools": [...]}.',
    )
    add_model_argument(p)
    p.add_argument("--messages", required=True, metavar="FILE.json", help="JSON list of messages (or a request body)")
    p.add_argument("--tools", metavar="FILE.json", help="JSON list of tool declarations (or an object with 'tools')")
    p.add_argument("--no-generation-prompt", action="store_true",
                   help="do not append the assistant turn opener <|im_assistant|>assistant<|im_middle|>")
    p.add_argument("--json", action="store_true", help='print one JSON object {"prompt": ..., "token_ids": [...]}')
    p.set_defaults(func=run)


def _read_json(path: str, what: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} file '{file}' does not exist")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} file '{file}' is not valid JSON: {exc}") from exc


def read_request(messages_path: str, tools_path: str | None) -> tuple[list, list | None]:
    """(messages, tools) from the files; a request-body object may carry both."""
    data = _read_json(messages_path, "--messages")
    tools = None
    if isinstance(data, dict):
        if "messages" not in data:
            raise ValueError(f"--messages file '{messages_path}' is an object without a 'messages' list")
        data, tools = data["messages"], data.get("tools")
    if tools_path:
        tools = _read_json(tools_path, "--tools")
        if isinstance(tools, dict):
            if "tools" not in tools:
                raise ValueError(f"--tools file '{tools_path}' is an object without a 'tools' list")
            tools = tools["tools"]
    return data, tools


def run(args: argparse.Namespace) -> int:
    from kimi_local.text.chat import ChatFormat

    messages, tools = read_request(args.messages, args.tools)
    model_dir = resolve_model_dir(args.model, load_config(args))
    chat = ChatFormat.from_dir(model_dir)
    add_generation_prompt = not args.no_generation_prompt
    prompt = chat.render(messages, tools, add_generation_prompt=add_generation_prompt)
    ids = chat.encode_messages(messages, tools, add_generation_prompt=add_generation_prompt)
    if args.json:
        print(json.dumps({"prompt": prompt, "token_ids": ids, "num_tokens": len(ids),
                          "template": chat.source, "model": str(model_dir)}, ensure_ascii=False))
    else:
        print(prompt)
        print(f"\n--- {len(ids)} tokens (template: {chat.source}) ---")
        print(" ".join(map(str, ids)))
    return 0
