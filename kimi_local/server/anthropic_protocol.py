"""The Anthropic Messages wire format: request, response and stream-event models, nothing else.

Requests are validated field by field (a bad value is a 400 naming it); unknown fields (`thinking`,
`service_tier`, `container`, ...) are ignored so current clients keep working. Content blocks are kept as
plain dicts here and checked block by block where they are translated (`anthropic_messages`), so an error can
name the exact block (`messages.2.content.1.type`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kimi_local.server.response_model import ResponseModel

MAX_STOP_SEQUENCES = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputMessage(_Request):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class TextBlockParam(_Request):
    type: Literal["text"] = "text"
    text: str


class ToolParam(_Request):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    type: str | None = None  # "custom" or absent; Anthropic's server tools (bash_2025..., web_search_...) are not


class ToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Request):
    user_id: str | None = None


class PromptFields(_Request):
    """What a prompt is made of: shared by /v1/messages and /v1/messages/count_tokens."""

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(PromptFields):
    max_tokens: int = Field(ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    metadata: Metadata | None = None
    stream: bool = False

    @field_validator("stop_sequences")
    @classmethod
    def _check_stops(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are supported, got {len(value)}")
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value


class CountTokensRequest(PromptFields):
    pass


# -- responses ---------------------------------------------------------------------------------------------


class _Response(ResponseModel):
    """Anthropic response objects (keys Anthropic always sends, even as null, in `always_sent`)."""


class TextBlock(_Response):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(_Response):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class Usage(_Response):
    """Anthropic splits the prompt three ways, adding up to all of it: `cache_read_input_tokens` were reused
    (here: KV rows a slot still held from an earlier request with the same prefix), `cache_creation_input_tokens`
    were written to a cache for later requests (always 0: nothing is cached on request), `input_tokens` the rest,
    computed for this request."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, cached_tokens: int, output_tokens: int) -> "Usage":
        return cls(input_tokens=prompt_tokens - cached_tokens, output_tokens=output_tokens,
                   cache_creation_input_tokens=0, cache_read_input_tokens=cached_tokens)


class Message(_Response):
    always_sent = ("stop_reason", "stop_sequence")
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock | ToolUseBlock]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None = None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(_Response):
    input_tokens: int
