"""Opening a chat backend, with progress: a checkpoint loaded in this process, or a running server.

Both return an `OpenBackend` for the app: a function it calls on its loading thread with a progress callback.
Locally the steps are: find the model directory (explicit, configured, or the built-in demo), read the
tokenizer and chat template (fast, so a checkpoint without a tokenizer fails before minutes of loading),
load the layers (progress per layer), register the routing statistics on the model, and start the engine
service, the same token stream the server uses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kimi_local.config import Config
from kimi_local.tui.app import OpenBackend, Progress
from kimi_local.tui.backend import BackendInfo, ChatBackend

log = logging.getLogger(__name__)


def open_local(model: str | None, config: Config, max_queue: int | None = None) -> OpenBackend:
    def open_backend(progress: Progress) -> ChatBackend:
        from kimi_local.commands.common import is_demo, resolve_model_dir
        from kimi_local.engine.loader import load
        from kimi_local.engine.routing_stats import RoutingStats
        from kimi_local.engine.service import EngineService
        from kimi_local.text.chat import ChatFormat
        from kimi_local.tui.local_backend import LocalBackend

        progress("finding the model", 0, 0)
        model_dir = Path(resolve_model_dir(model, config))
        progress(f"reading the tokenizer in {model_dir}", 0, 0)
        chat_format = ChatFormat.from_dir(model_dir)
        progress("loading layers", 0, 0)
        loaded = load(model_dir, config, progress=lambda done, total: progress("loading layers", done, total))
        routing = RoutingStats.for_model(loaded.model)
        service = EngineService(loaded.engine, max_queue=max_queue or config.server.max_queue)
        info = BackendInfo(model_name=model_dir.name, location=str(model_dir), is_demo=is_demo(model_dir),
                           max_context=loaded.engine.max_context)
        log.info("chat backend ready: %s", model_dir)
        return LocalBackend(service, chat_format, info, routing, loaded.experts,
                            on_close=lambda: (routing.detach(loaded.model), loaded.close()))

    return open_backend


def open_remote(url: str, api_key: str = "") -> OpenBackend:
    def open_backend(progress: Progress) -> ChatBackend:
        from kimi_local.tui.remote_backend import RemoteBackend

        progress(f"connecting to {url}", 0, 0)
        return RemoteBackend.connect(url, api_key)

    return open_backend
