"""Text in, text out: Kimi's tokenizer, chat template and tool-call parser.

* `KimiTokenizer` (tokenizer.py): tiktoken BPE from a checkpoint's `tiktoken.model` + `tokenizer_config.json`;
  `IncrementalDecoder` (incremental.py) for UTF-8-safe streaming.
* `ChatFormat` (chat.py): OpenAI-style messages -> prompt text / ids with the checkpoint's jinja template in a
  sandbox; `render_reference` (chat_reference.py) is the same format in plain Python.
* `ChoiceText` (choice_text.py): one reply's engine outputs -> text (stop ids hidden, stop strings cut with
  `StopStringMatcher` from stop_strings.py), for the server and the TUI alike.
* `parse_tool_calls`, `ToolCallStreamParser` (tool_calls.py): Kimi's tool-call sections -> OpenAI tool calls.
* `write_demo_tokenizer` (demo_tokenizer.py): a small tokenizer in Kimi's format for demo/tiny checkpoints.
"""

from kimi_local.text.chat import ChatFormat
from kimi_local.text.chat_reference import DEFAULT_SYSTEM_PROMPT, render_reference
from kimi_local.text.demo_tokenizer import write_demo_tokenizer
from kimi_local.text.incremental import IncrementalDecoder
from kimi_local.text.tokenizer import KimiTokenizer
from kimi_local.text.tool_calls import (
    ContentDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallDone,
    ToolCallStreamParser,
    parse_tool_calls,
)

__all__ = [
    "ChatFormat", "ContentDelta", "DEFAULT_SYSTEM_PROMPT", "IncrementalDecoder", "KimiTokenizer", "ToolCall",
    "ToolCallDelta", "ToolCallDone", "ToolCallStreamParser", "parse_tool_calls", "render_reference",
    "write_demo_tokenizer",
]
