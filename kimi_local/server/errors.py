"""API errors and their two wire shapes.

Handlers raise `ApiError(status, message, param=...)`; the app renders it in the shape of the protocol the
client speaks: OpenAI's `{"error": {"message", "type", "param", "code"}}` or Anthropic's
`{"type": "error", "error": {"type", "message"}}`. The error type follows from the status unless given.
Messages name the offending field or limit, never a file path or a traceback.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

OPENAI_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "request_too_large", 415: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type or OPENAI_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, Any]:
        """Anthropic's shape has no `param`, so the field is named in the message."""
        message = self.message
        if self.param and self.param not in message:
            message = f"{self.param}: {message}"
        return {"type": "error", "error": {"type": self.type or ANTHROPIC_TYPES.get(self.status, "api_error"),
                                           "message": message}}


_DIRECTORIES = re.compile(r"(?<![\w.])(?:/[^/\s'\"]+)+/(?=[^/\s'\"]+)")


def engine_failure(error: str | None) -> ApiError:
    """A request that failed inside the engine: the error names the shard file and tensor, without the
    directories of the checkpoint's path (a 500; the server log has the full message)."""
    return ApiError(500, f"generation failed: {_DIRECTORIES.sub('', error or 'unknown error')}", code="engine_error")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_validation_error(exc: ValidationError) -> ApiError:
    """The first pydantic error as a 400 naming the field (`messages.0.role`), the way OpenAI names params."""
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first.get("loc", ()) if not str(part).startswith("function-"))
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = f"'{loc}' is a required property"
    elif loc:
        message = f"Invalid value for '{loc}': {message}"
    return ApiError(400, message, param=loc or None, code="invalid_value" if first.get("type") != "missing" else None)


MAX_JSON_DEPTH = 100  # deeper bodies broke recursion (json, pydantic, templates) into 500s; real ones are < 20
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs, so any left is unpaired


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a parsed body is refused, or None: objects and arrays nested more than `max_depth` deep, or a string
    with an unpaired UTF-16 surrogate (`"\\ud800"`: not Unicode; it cannot be encoded or sent back). Iterative,
    so hostile input cannot recurse."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return "a string in the request body contains an unpaired UTF-16 surrogate (not valid Unicode)"
            continue
        children = [*item, *item.values()] if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            return f"the request body nests objects and arrays more than {max_depth} levels deep"
        stack.extend((child, depth + 1) for child in children)
    return None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of more than 4300 digits
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise bad_request(f"the request body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep",
                          code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    problem = json_problem(body)
    if problem is not None:
        raise bad_request(problem, code="invalid_json")
    return body
