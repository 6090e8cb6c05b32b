"""A small OpenAI-compatible server for the remote backend's tests (stdlib only, one thread per request).

It streams a scripted reply as SSE chunks (with keep-alive comments and a final usage chunk), serves
`/v1/models`, `/health` and `/metrics`, can answer with an OpenAI-shaped error, and records each request body
and whether the client hung up before the stream ended.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METRICS = "\n".join([
    "# HELP kimi_requests_running x", "# TYPE kimi_requests_running gauge",
    "kimi_requests_running 1", "kimi_queue_depth 2",
    "kimi_expert_cache_hits 30", "kimi_expert_cache_misses 10",
    'kimi_expert_cache_resident_bytes{tier="ram"} 1073741824',
    'kimi_expert_cache_resident_bytes{tier="gpu"} 2048',
    "process_resident_memory_bytes 4096",
    "kimi_routed_tokens_total 12",
    'kimi_expert_load_share{layer="1",expert="0"} 0.75',
    'kimi_expert_load_share{layer="1",expert="1"} 0.25',
    'kimi_expert_load_share{layer="2",expert="0"} 0.5',
    'kimi_expert_load_share{layer="2",expert="3"} 0.5',
]) + "\n"


class FakeServer:
    def __init__(self, pieces: list[str], delay: float = 0.0, api_key: str = ""):
        self.pieces = pieces
        self.delay = delay
        self.api_key = api_key
        self.error: tuple[int, dict] | None = None
        self.requests: list[dict] = []
        self.metrics_queries: list[str] = []
        self.disconnected = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._json(401, {"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "fake-kimi", "object": "model"}]})
                elif self.path == "/health":
                    self._json(200, {"status": "ok", "max_context": 4096})
                elif self.path.startswith("/metrics"):
                    server.metrics_queries.append(self.path)
                    data = METRICS.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if server.error is not None:
                    self._json(*server.error)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                frames = [": keep-alive\n\n"]
                base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "fake-kimi"}
                frames.append("data: " + json.dumps({**base, "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}) + "\n\n")
                for piece in server.pieces:
                    frames.append("data: " + json.dumps({**base, "choices": [
                        {"index": 0, "delta": {"content": piece}, "finish_reason": None}]}) + "\n\n")
                frames.append("data: " + json.dumps({**base, "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "length"}]}) + "\n\n")
                frames.append("data: " + json.dumps({**base, "choices": [], "usage": {
                    "prompt_tokens": 17, "completion_tokens": len(server.pieces),
                    "total_tokens": 17 + len(server.pieces)}}) + "\n\n")
                frames.append("data: [DONE]\n\n")
                try:
                    for frame in frames:
                        self.wfile.write(frame.encode())
                        self.wfile.flush()
                        if server.delay:
                            time.sleep(server.delay)
                except (BrokenPipeError, ConnectionResetError):
                    server.disconnected.set()
                self.close_connection = True

        return Handler
