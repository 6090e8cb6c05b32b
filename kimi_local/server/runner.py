"""Wiring a loaded model into a server, and running uvicorn in the foreground or on a thread.

`build_state` makes the `ServerState` from what `engine.loader.load` returned: the engine service around the
engine, the checkpoint's tokenizer and chat template, a routing-statistics hook on the model and, when the
expert backend offers one, its cache snapshot for the metrics. `ServerThread` runs uvicorn on a background
thread on a socket bound up front (port 0 picks a free one), for tests and benchmarks.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from kimi_local.engine.routing_stats import RoutingStats
from kimi_local.engine.service import EngineService
from kimi_local.server.metrics import ServerMetrics
from kimi_local.server.state import ServerState
from kimi_local.text.chat import ChatFormat
from kimi_local.text.tokenizer import KimiTokenizer

log = logging.getLogger(__name__)


def expert_cache_snapshot(experts):
    """The snapshot callable (`stats()` or `snapshot()`) of the expert backend or of its `store`, or None."""
    for owner in (experts, getattr(experts, "store", None)):
        for name in ("stats", "snapshot"):
            method = getattr(owner, name, None) if owner is not None else None
            if callable(method):
                return method
    return None


def build_state(loaded, model_name: str, api_key: str = "", max_queue: int = 64) -> ServerState:
    """`loaded` is an `engine.loader.LoadedModel`; the service it starts is closed by `ServerState.close`."""
    tokenizer = KimiTokenizer.from_dir(loaded.path)
    chat_format = ChatFormat.from_dir(loaded.path, tokenizer)
    if tokenizer.vocab_size > loaded.engine.config.vocab_size:
        raise ValueError(f"{loaded.path}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{loaded.engine.config.vocab_size}")
    routing = RoutingStats.for_model(loaded.model)  # per-layer expert load and entropy for /metrics
    metrics = ServerMetrics(routing, expert_cache_snapshot(loaded.experts))
    service = EngineService(loaded.engine, max_queue=max_queue)
    return ServerState(service, tokenizer, chat_format, model_name, api_key, metrics, on_close=loaded.close)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                          lifespan="off", ws="none")


class ServerThread:
    """uvicorn serving `app` on a background thread; `url` is known once `start()` returns."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, log_level))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="kimi-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
