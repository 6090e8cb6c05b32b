"""`kimi-local serve`: the OpenAI- and Anthropic-compatible HTTP server on one port.

Loads the model (the configured one, --model, or the built-in demo), starts the engine service and serves
`/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/v1/messages`, `/v1/messages/count_tokens`,
`/health` and `/metrics` with uvicorn. Binds 127.0.0.1 unless told otherwise; binding another address
without an API key logs a warning, since anyone who can reach the port can then use the model. The server
answers only to its own names in the Host header (loopback, and the bound address unless it is 0.0.0.0 or ::),
so a web page cannot reach it through DNS rebinding (`server/trusted_hosts.py`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from kimi_local.commands.common import add_model_argument, is_demo, load_config, load_with_progress, resolve_model_dir
from kimi_local.settings import add_config_flags

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the model over the OpenAI and Anthropic HTTP APIs",
        description="Serve the model on one port with the OpenAI API (/v1/chat/completions, /v1/completions, "
        "/v1/models) and the Anthropic Messages API (/v1/messages), plus /health and /metrics (Prometheus). "
        "Requests are batched together by the engine.",
    )
    add_model_argument(p)
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients see (default: the checkpoint directory's name)")
    add_config_flags(p, ("engine", "cache", "server"))  # --host, --port, --api-key, --max-queue, --max-batch, ...
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from kimi_local.server.app import create_app
    from kimi_local.server.runner import bind_socket, build_state, uvicorn_config

    config = load_config(args)  # defaults < kimi-local.toml < KIMI_LOCAL_* (incl. KIMI_LOCAL_API_KEY) < flags
    host, port, api_key = config.server.host, config.server.port, config.server.api_key
    if not _is_loopback(host) and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)

    sock = bind_socket(host, port)  # fail on a busy port before spending minutes loading the model
    model_dir = resolve_model_dir(args.model, config)
    loaded = load_with_progress(model_dir, config)
    name = args.model_name or ("kimi-local-demo" if is_demo(model_dir) else model_dir.resolve().name)
    state = build_state(loaded, name, api_key=api_key, max_queue=config.server.max_queue)
    app = create_app(state, host=host)
    bound = sock.getsockname()
    print(f"kimi-local: serving '{name}' on http://{host}:{bound[1]} (OpenAI: /v1/chat/completions, "
          f"Anthropic: /v1/messages)", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn_config(app, log_level="info" if args.verbose else "warning"))
    try:
        server.run(sockets=[sock])
    finally:
        state.close()
        sock.close()
    return 0
