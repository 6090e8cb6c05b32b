"""The server's OpenAPI document, completed from its own protocol models, for schemathesis to fuzz.

FastAPI builds a document from the routes (`app.openapi()`), but the routes read raw bodies (so that a bad body
is a 400 naming the field, in the caller's protocol) and return raw responses, so that document has paths and
methods but no request bodies and empty response schemas. Here each operation gets:

- its request body: the pydantic request model's JSON schema (`ChatCompletionRequest`, `CompletionRequest`,
  `MessagesRequest`, `CountTokensRequest`), with the free-form parts the models keep as dicts (OpenAI messages
  and tools, Anthropic content blocks) spelled out from the public API specs, so generated requests reach the
  engine instead of stopping at validation;
- its responses: 200 with the response model's serialization schema (plus `text/event-stream` where `stream`
  is accepted), and `4XX` with the error shape of its protocol (OpenAI's, or Anthropic's under /v1/messages).
  No 5xx is documented: any 5xx is a failure.

What the app itself already documents is kept (a route that later declares its own request body wins), and
`missing_operations` says which of the app's routes this module does not know, so a new route is noticed.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from kimi_local.server import anthropic_protocol as ap
from kimi_local.server import openai_protocol as op

REF = "#/components/schemas/{}"

OPENAI_ERROR = {
    "type": "object", "additionalProperties": False, "required": ["error"],
    "properties": {"error": {
        "type": "object", "additionalProperties": False, "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string", "minLength": 1}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}
ANTHROPIC_ERROR = {
    "type": "object", "additionalProperties": False, "required": ["type", "error"],
    "properties": {"type": {"const": "error"}, "error": {
        "type": "object", "additionalProperties": False, "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string", "minLength": 1}},
    }},
}
HEALTH = {
    "type": "object", "required": ["status", "model", "running", "waiting", "max_context"],
    "properties": {"status": {"const": "ok"}, "model": {"type": "string"}, "running": {"type": "integer", "minimum": 0},
                   "waiting": {"type": "integer", "minimum": 0}, "max_context": {"type": "integer", "minimum": 1}},
}

# -- OpenAI chat messages and tools (the public API's shapes, text only) ----------------------------------
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}
_TOOL_CALL = {"type": "object", "required": ["id", "type", "function"], "properties": {
    "id": {"type": "string", "minLength": 1}, "type": {"const": "function"},
    "function": {"type": "object", "required": ["name", "arguments"],
                 "properties": {"name": {"type": "string", "minLength": 1}, "arguments": {"type": "string"}}}}}
OPENAI_MESSAGE = {"oneOf": [
    {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"enum": ["system", "developer", "user"]}, "content": _CONTENT, "name": {"type": "string"}}},
    {"type": "object", "required": ["role"], "properties": {
        "role": {"const": "assistant"}, "content": {"anyOf": [_CONTENT, {"type": "null"}]},
        "tool_calls": {"type": "array", "items": _TOOL_CALL}}},
    {"type": "object", "required": ["role", "content", "tool_call_id"], "properties": {
        "role": {"const": "tool"}, "content": _CONTENT, "tool_call_id": {"type": "string", "minLength": 1}}},
]}
OPENAI_TOOL = {"type": "object", "required": ["type", "function"], "properties": {
    "type": {"const": "function"},
    "function": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
        "parameters": {"type": "object"}}}}}

# -- Anthropic content blocks --------------------------------------------------------------------------------
_A_TEXT = {"type": "object", "required": ["type", "text"],
           "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_A_TOOL_USE = {"type": "object", "required": ["type", "id", "name", "input"], "properties": {
    "type": {"const": "tool_use"}, "id": {"type": "string", "minLength": 1},
    "name": {"type": "string", "minLength": 1}, "input": {"type": "object"}}}
_A_TOOL_RESULT = {"type": "object", "required": ["type", "tool_use_id"], "properties": {
    "type": {"const": "tool_result"}, "tool_use_id": {"type": "string", "minLength": 1},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _A_TEXT}]}, "is_error": {"type": "boolean"}}}
ANTHROPIC_BLOCK = {"oneOf": [_A_TEXT, _A_TOOL_USE, _A_TOOL_RESULT]}



# -- server-sent events: schemathesis checks each event ({"event", "data"}) and, through contentSchema, the JSON
# payload in its data field ---------------------------------------------------------------------------------
def json_data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def openai_event(chunk: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """`data: {chunk}` frames, an error frame, and the final `data: [DONE]`."""
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"const": "message"},
        "data": {"anyOf": [{"const": "[DONE]"}, json_data({"anyOf": [chunk, error]})]}}}


def _event(name: str, **properties: Any) -> dict[str, Any]:
    data = {"type": "object", "additionalProperties": False, "required": ["type", *properties],
            "properties": {"type": {"const": name}, **properties}}
    return {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"const": name}, "data": json_data(data)}}


_INDEX = {"type": "integer", "minimum": 0}


def anthropic_event(message: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's stream: every `event:` name matches its data's `type`."""
    block = {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["type", "text"],
         "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
        {"type": "object", "additionalProperties": False, "required": ["type", "id", "name", "input"],
         "properties": {"type": {"const": "tool_use"}, "id": {"type": "string", "minLength": 1},
                        "name": {"type": "string", "minLength": 1}, "input": {"type": "object"}}}]}
    delta = {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["type", "text"],
         "properties": {"type": {"const": "text_delta"}, "text": {"type": "string"}}},
        {"type": "object", "additionalProperties": False, "required": ["type", "partial_json"],
         "properties": {"type": {"const": "input_json_delta"}, "partial_json": {"type": "string"}}}]}
    stop = {"type": "object", "additionalProperties": False, "required": ["stop_reason", "stop_sequence"],
            "properties": {"stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]},
                           "stop_sequence": {"type": ["string", "null"]}}}
    usage = {"type": "object", "required": ["output_tokens"],
             "properties": {"output_tokens": {"type": "integer", "minimum": 0}}}
    error_event = {"type": "object", "required": ["event", "data"],
                   "properties": {"event": {"const": "error"}, "data": json_data(error)}}
    return {"oneOf": [
        _event("message_start", message=message), _event("ping"),
        _event("content_block_start", index=_INDEX, content_block=block),
        _event("content_block_delta", index=_INDEX, delta=delta), _event("content_block_stop", index=_INDEX),
        _event("message_delta", delta=stop, usage=usage), _event("message_stop"), error_event]}


class _Builder:
    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        self.schemas = doc.setdefault("components", {}).setdefault("schemas", {})

    def model(self, model: type[BaseModel], prefix: str, mode: str) -> dict[str, Any]:
        """A $ref to `model`'s schema in components (its nested models beside it, named `prefix.Name`)."""
        name = f"{prefix}.{model.__name__}"
        if name not in self.schemas:
            schema = model.model_json_schema(mode=mode, ref_template=REF.format(prefix + ".{model}"))
            for sub, sub_schema in schema.pop("$defs", {}).items():
                self.schemas.setdefault(f"{prefix}.{sub}", sub_schema)
            self.schemas[name] = schema
        return {"$ref": REF.format(name)}

    def named(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        self.schemas.setdefault(name, schema)
        return {"$ref": REF.format(name)}

    def operation(self, path: str, method: str) -> dict[str, Any]:
        return self.doc["paths"][path][method]

    def post(self, path: str, request: type[BaseModel], response: type[BaseModel], prefix: str, error: dict,
             event: dict | None) -> None:
        """`event`: the schema of one server-sent event when the operation can stream (`"stream": true`)."""
        operation = self.operation(path, "post")
        if "requestBody" not in operation:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": self.model(request, prefix, "validation")}}}
        content = {"application/json": {"schema": self.model(response, prefix, "serialization")}}
        if event is not None:
            content["text/event-stream"] = {"schema": event}
        operation["responses"] = {"200": {"description": "the reply", "content": content},
                                  "4XX": {"description": "refused", "content": {"application/json": {"schema": error}}}}

    def get(self, path: str, content: dict[str, Any], error: dict | None) -> None:
        operation = self.operation(path, "get")
        responses = {"200": {"description": "ok", "content": content}}
        if error is not None:
            responses["4XX"] = {"description": "refused", "content": {"application/json": {"schema": error}}}
        operation["responses"] = responses

    def refine(self, name: str, dotted: str, schema: dict[str, Any]) -> None:
        """Replace the part of component `name` at `dotted` (property names; `[]` steps into array items,
        `|array` into the array branch of an anyOf)."""
        node = self.schemas[name]
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = _step(node, part)
        last = parts[-1]
        if last == "[]":
            node["items"] = schema
        else:
            node["properties"][last] = schema


def _step(node: dict[str, Any], part: str) -> dict[str, Any]:
    if part == "[]":
        return node["items"]
    if part == "|array":
        return next(b for b in node["anyOf"] if b.get("type") == "array")
    return node["properties"][part]


def complete_openapi(app) -> dict[str, Any]:
    """The app's own document with request bodies and response schemas filled in (a new dict)."""
    b = _Builder(copy.deepcopy(app.openapi()))
    openai_error = b.named("openai.Error", OPENAI_ERROR)
    anthropic_error = b.named("anthropic.Error", ANTHROPIC_ERROR)
    chunk = b.model(op.ChatCompletionChunk, "openai", "serialization")
    completion = b.model(op.Completion, "openai", "serialization")
    message = b.model(ap.Message, "anthropic", "serialization")
    b.post("/v1/chat/completions", op.ChatCompletionRequest, op.ChatCompletion, "openai", openai_error,
           openai_event(chunk, openai_error))
    b.post("/v1/completions", op.CompletionRequest, op.Completion, "openai", openai_error,
           openai_event(completion, openai_error))
    b.post("/v1/messages", ap.MessagesRequest, ap.Message, "anthropic", anthropic_error,
           anthropic_event(message, anthropic_error))
    b.post("/v1/messages/count_tokens", ap.CountTokensRequest, ap.TokenCount, "anthropic", anthropic_error, None)
    b.get("/v1/models", {"application/json": {"schema": b.model(op.ModelList, "openai", "serialization")}},
          openai_error)
    b.get("/v1/models/{model_id}", {"application/json": {"schema": b.model(op.ModelCard, "openai", "serialization")}},
          openai_error)
    b.get("/health", {"application/json": {"schema": HEALTH}}, None)
    b.get("/metrics", {"text/plain": {"schema": {"type": "string"}}}, openai_error)
    b.refine("openai.ChatCompletionRequest", "messages.[]", b.named("openai.Message", OPENAI_MESSAGE))
    b.refine("openai.ChatCompletionRequest", "tools.|array.[]", b.named("openai.Tool", OPENAI_TOOL))
    b.refine("anthropic.InputMessage", "content.|array.[]", b.named("anthropic.Block", ANTHROPIC_BLOCK))
    b.doc["components"]["schemas"].pop("HTTPValidationError", None)  # FastAPI's 422; the routes never send it
    b.doc["components"]["schemas"].pop("ValidationError", None)
    return b.doc


KNOWN = {("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/messages", "post"),
         ("/v1/messages/count_tokens", "post"), ("/v1/models", "get"), ("/v1/models/{model_id}", "get"),
         ("/health", "get"), ("/metrics", "get")}


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item
            if method in ("get", "post", "put", "patch", "delete")}


def missing_operations(app) -> set[tuple[str, str]]:
    """Routes of the app that `complete_openapi` does not document."""
    return operations(app.openapi()) - KNOWN

