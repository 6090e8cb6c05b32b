"""Hand-written hostile requests: what a fuzzer rarely builds but a broken client, a proxy or an attacker sends.

Each case is raw bytes on the wire (so invalid UTF-8, unpaired surrogate escapes and 5000-digit integers are
really sent) with the statuses it may get. Whatever it is, the answer must be one of those statuses, never a
5xx, and a refusal must be an error body in the route's protocol (OpenAI's shape, or Anthropic's under
/v1/messages) that names the problem. After all of them the server must still be healthy and idle.

Sizes are relative to the server's limits (`MAX_BODY_BYTES`, `MAX_JSON_DEPTH`, the context), so the cases
stay meaningful if a limit changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

from kimi_local.server.errors import MAX_JSON_DEPTH
from kimi_local.server.serving_common import MAX_BODY_BYTES

CHAT, COMPLETIONS, MESSAGES, COUNT = "/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens"
OK, REFUSED = {200}, {400}
USER = [{"role": "user", "content": "Say hi."}]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes | Callable[[], Iterator[bytes]]  # a generator function: sent chunked, without Content-Length
    expect: set[int]
    mentions: str = ""  # a refusal's message must contain this (the field or the limit)
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


def chat(**fields) -> bytes:
    return json.dumps({"messages": USER, "max_tokens": 4, **fields}).encode()


def anthropic(**fields) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 4, "messages": USER, **fields}).encode()


def raw(text: str) -> bytes:
    """JSON text as written (escapes such as \\ud800 and huge integers reach the server's parser as is)."""
    return text.encode("utf-8")


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


def _chunked_body(size: int) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages":[{"role":"user","content":"'
        for _ in range(size // (1 << 20) + 1):
            yield b"a" * (1 << 20)
        yield b'"}],"max_tokens":1}'

    return chunks


def _tool(parameters) -> dict:
    return {"type": "function", "function": {"name": "f", "description": "d", "parameters": parameters}}


def cases() -> list[Case]:
    over = MAX_BODY_BYTES + 1
    big_text = "x" * (MAX_BODY_BYTES - 1024)
    deep_ok = MAX_JSON_DEPTH - 10  # inside the limit even with the fields around it
    return [
        # -- size ---------------------------------------------------------------------------------------------
        Case("body over the limit (Content-Length)", CHAT, b"{" + b" " * over + b"}", {413}, str(MAX_BODY_BYTES)),
        Case("body over the limit (Anthropic)", MESSAGES, b"{" + b" " * over + b"}", {413}, str(MAX_BODY_BYTES)),
        Case("body over the limit (chunked, no Content-Length)", CHAT, _chunked_body(over), {413},
             str(MAX_BODY_BYTES)),
        Case("body just under the limit: a prompt far over the context", CHAT,
             chat(messages=[{"role": "user", "content": big_text[: MAX_BODY_BYTES // 2]}]), REFUSED, "context"),
        # -- structure ----------------------------------------------------------------------------------------
        Case("empty body", CHAT, b"", REFUSED, "empty"),
        Case("not JSON", CHAT, b"messages=hi", REFUSED, "JSON"),
        Case("JSON array at the top", CHAT, b"[1, 2]", REFUSED, "object"),
        Case("JSON null", MESSAGES, b"null", REFUSED, "object"),
        Case("truncated JSON", CHAT, chat()[:-3], REFUSED, "JSON"),
        Case("invalid UTF-8", CHAT, b'{"messages":[{"role":"user","content":"\xff\xfe\xc0"}]}', REFUSED, "JSON"),
        Case("invalid UTF-8 (Anthropic)", MESSAGES, b'{"model":"m","max_tokens":1,"messages":[{"role":"user",'
             b'"content":"\xed\xa0\x80"}]}', REFUSED, "surrogate"),  # json decodes bytes with surrogatepass
        Case("unpaired surrogate escape in content", CHAT,
             raw('{"messages":[{"role":"user","content":"a\\ud800b"}],"max_tokens":2}'), REFUSED, "surrogate"),
        Case("unpaired surrogate escape in a tool name", CHAT, raw(
            '{"messages":[{"role":"user","content":"x"}],"max_tokens":2,"tools":[{"type":"function","function":'
            '{"name":"f\\udc00"}}],"tool_choice":{"type":"function","function":{"name":"f\\udc00"}}}'),
            REFUSED, "surrogate"),
        Case("surrogate pair escape (valid)", CHAT,
             raw('{"messages":[{"role":"user","content":"\\ud83d\\ude00"}],"max_tokens":2}'), OK),
        Case("NUL and control characters in content", CHAT, chat(messages=[{"role": "user",
                                                                          "content": "\x00\x01\x1b[2J\x7f"}]), OK),
        Case(f"nesting {deep_ok} levels in an ignored field", CHAT, raw(chat()[:-1].decode() + ',"x":'
                                                                         + nested(deep_ok) + "}"), OK),
        Case(f"nesting {MAX_JSON_DEPTH + 1} levels", CHAT, raw(nested(MAX_JSON_DEPTH + 1)), REFUSED, "deep"),
        Case("nesting 100000 levels of arrays", CHAT, raw("[" * 100_000 + "]" * 100_000), REFUSED, "deep"),
        Case("nesting 100000 levels in tool parameters", CHAT, raw(
            '{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f",'
            '"parameters":' + nested(100_000) + "}}]}"), REFUSED, "deep"),
        Case("nesting 500 levels in tool_use input (Anthropic)", MESSAGES, raw(
            '{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"a",'
            '"name":"f","input":' + nested(500) + '}]},{"role":"user","content":"x"}]}'), REFUSED, "deep"),
        Case("a message with role as a list", CHAT, chat(messages=[{"role": [], "content": "x"}]), REFUSED, "role"),
        Case("a content block with type as a list (Anthropic)", MESSAGES,
             anthropic(messages=[{"role": "user", "content": [{"type": []}]}]), REFUSED, "type"),
        # -- numbers ------------------------------------------------------------------------------------------
        Case("negative max_tokens", CHAT, chat(max_tokens=-1), REFUSED, "max_tokens"),
        Case("zero n", CHAT, chat(n=0), REFUSED, "n"),
        Case("negative n", COMPLETIONS, json.dumps({"prompt": "x", "n": -5}).encode(), REFUSED, "n"),
        Case("negative top_k", CHAT, chat(top_k=-1), REFUSED, "top_k"),
        Case("negative temperature", MESSAGES, anthropic(temperature=-0.5), REFUSED, "temperature"),
        Case("negative top_logprobs", CHAT, chat(logprobs=True, top_logprobs=-1), REFUSED, "top_logprobs"),
        Case("max_tokens 10**30 (capped by the context)", CHAT, chat(max_tokens=10**30), OK),
        Case("max_tokens 10**30 (Anthropic)", MESSAGES, anthropic(max_tokens=10**30), OK),
        Case("seed 10**30", CHAT, chat(seed=10**30), OK),
        Case("seed -10**30", COMPLETIONS, json.dumps({"prompt": "x", "seed": -(10**30), "max_tokens": 2}).encode(),
             OK),
        Case("top_k 10**30", CHAT, chat(top_k=10**30), OK),
        Case("n 10**9", CHAT, chat(n=10**9), REFUSED, "n"),
        Case("max_tokens of 5000 digits", CHAT, raw('{"messages":[{"role":"user","content":"x"}],"max_tokens":'
                                                    + "9" * 5000 + "}"), REFUSED, "JSON"),
        Case("max_tokens 1e400 (infinite)", CHAT, raw('{"messages":[{"role":"user","content":"x"}],'
                                                      '"max_tokens":1e400}'), REFUSED, "max_tokens"),
        Case("temperature NaN", CHAT, raw('{"messages":[{"role":"user","content":"x"}],"temperature":NaN}'),
             REFUSED, "temperature"),
        Case("top_p 5e-324 (below float32)", CHAT, chat(top_p=5e-324, temperature=1.0), OK),
        Case("top_p 5e-324 (completions)", COMPLETIONS, json.dumps({"prompt": "x", "top_p": 5e-324,
                                                                     "max_tokens": 3}).encode(), OK),
        Case("temperature 1e-320 (greedy)", CHAT, chat(temperature=1e-320), OK),
        Case("token id -1", COMPLETIONS, json.dumps({"prompt": [-1], "max_tokens": 2}).encode(), REFUSED,
             "vocabulary"),
        Case("token id 10**12", COMPLETIONS, json.dumps({"prompt": [[10**12]], "max_tokens": 2}).encode(), REFUSED,
             "vocabulary"),
        Case("5000 prompts x n=16 (queue limit)", COMPLETIONS, json.dumps({"prompt": [[1]] * 5000, "n": 16,
                                                                            "max_tokens": 2}).encode(), {429}, "busy"),
        Case("n=16 with 20 logprobs", CHAT, chat(n=16, logprobs=True, top_logprobs=20, max_tokens=3), OK),
        # -- stop sequences -----------------------------------------------------------------------------------
        Case("5000 stop sequences", CHAT, chat(stop=[f"s{i}" for i in range(5000)]), REFUSED, "stop"),
        Case("5000 stop sequences (Anthropic)", MESSAGES, anthropic(stop_sequences=[f"s{i}" for i in range(5000)]),
             REFUSED, "stop_sequences"),
        Case("an empty stop string", CHAT, chat(stop=[""]), REFUSED, "stop"),
        Case("a 1 MB stop string", CHAT, chat(stop=["z" * (1 << 20)], max_tokens=16), OK),
        Case("stop strings made of special-token text", CHAT, chat(stop=["<|im_end|>", "[EOS]"]), OK),
        # -- tools that are not JSON Schema -------------------------------------------------------------------
        Case("tool parameters a string", CHAT, chat(tools=[_tool("not a schema")]), OK | REFUSED),
        Case("tool parameters a list", CHAT, chat(tools=[_tool([1, 2, {"$ref": "#/x"}])]), OK | REFUSED),
        Case("tool parameters with bad keywords", CHAT, chat(tools=[_tool({"type": 42, "properties": [],
                                                                         "required": {"a": 1}})]), OK | REFUSED),
        Case("tool parameters with a $ref to a file", CHAT, chat(tools=[_tool({"$ref": "file:///etc/passwd"})]),
             OK | REFUSED),
        Case("tool without a function", CHAT, chat(tools=[{"type": "function"}]), REFUSED, "tools"),
        Case("tool of another type", CHAT, chat(tools=[{"type": "retrieval", "function": {"name": "f"}}]), REFUSED,
             "tools"),
        Case("tool name that is a list", CHAT, chat(tools=[{"type": "function", "function": {"name": ["f"]}}]),
             REFUSED, "tools"),
        Case("tool_choice naming no tool", CHAT, chat(tools=[_tool({})], tool_choice={
            "type": "function", "function": {"name": "g"}}), REFUSED, "tool_choice"),
        Case("Anthropic input_schema not a schema", MESSAGES, anthropic(tools=[
            {"name": "f", "input_schema": {"type": [], "properties": "x"}}]), OK | REFUSED),
        Case("Anthropic server tool type", MESSAGES, anthropic(tools=[{"name": "bash", "type": "bash_20250124"}]),
             REFUSED, "tools.0.type"),
        Case("tool call arguments not JSON", CHAT, chat(messages=[
            *USER, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                          "function": {"name": "f", "arguments": "{not json"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}]), OK | REFUSED),
        # -- what a web page can send ---------------------------------------------------------------------------
        Case("cross-site text/plain POST", CHAT, chat(), {415}, "Content-Type", headers={"content-type": "text/plain"}),
        Case("form POST (Anthropic)", MESSAGES, b"model=m&max_tokens=1", {415}, "Content-Type",
             headers={"content-type": "application/x-www-form-urlencoded"}),
        Case("JSON in another charset", CHAT, chat(), {415}, "UTF-8",
             headers={"content-type": "application/json; charset=latin-1"}),
        Case("DNS rebinding: a foreign Host", CHAT, chat(), {400}, "Host", headers={"host": "attacker.example"}),
        Case("DNS rebinding on a GET", "/v1/models", b"", {400}, "Host", method="GET",
             headers={"host": "rebind.attacker.example:8000"}),
        # -- routes and methods -------------------------------------------------------------------------------
        Case("GET on a POST route", CHAT, b"", {405}, "not allowed", method="GET"),
        Case("unknown route", "/v1/../../etc/passwd", b"", {404}, method="GET"),
        Case("unknown model id", "/v1/models/..%2f..%2fetc%2fpasswd", b"", {404}, "does not exist", method="GET"),
        Case("count_tokens with a body over the context", COUNT, json.dumps({"model": "m", "messages": [
            {"role": "user", "content": "word " * 5000}]}).encode(), OK),
        Case("a 60 KB header", CHAT, chat(), {200, 400, 431}, headers={"x-junk": "j" * 60_000}),
    ]


@dataclass(frozen=True)
class Outcome:
    case: Case
    status: int
    body: str
    seconds: float
    problems: tuple[str, ...]

    @property
    def survived(self) -> bool:
        return not self.problems


def error_message(path: str, body: str) -> str | None:
    """The message of an error body in the route's protocol, or None if the body is not that shape."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    if path.startswith(MESSAGES) and data.get("type") != "error":
        return None
    message = data["error"].get("message")
    return message if isinstance(message, str) and message else None


def send(client: httpx.Client, case: Case) -> Outcome:
    headers = {"content-type": "application/json", **case.headers}
    content = case.body() if callable(case.body) else case.body
    start = time.perf_counter()
    try:
        response = client.request(case.method, case.path, content=content, headers=headers)
        status, text = response.status_code, response.text
    except httpx.HTTPError as exc:  # the server closed the connection instead of answering
        status, text = 0, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    problems = []
    if status not in case.expect:
        problems.append(f"status {status}, expected {sorted(case.expect)}: {text[:300]}")
    if 400 <= status < 500 and status != 431:  # 431 comes from the HTTP layer, before the app
        message = error_message(case.path, text)
        if message is None:
            problems.append(f"refusal is not an error body of the route's protocol: {text[:300]}")
        elif case.mentions and case.mentions.lower() not in message.lower():
            problems.append(f"refusal does not mention {case.mentions!r}: {message[:300]}")
    return Outcome(case, status, text, seconds, tuple(problems))


def run_hostile(base_url: str, timeout: float = 120.0) -> list[Outcome]:
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        return [send(client, case) for case in cases()]
