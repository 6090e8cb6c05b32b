"""What every handler needs, held by `app.state.kimi`: built once at start-up, passed in, never global.

The engine service (the one token stream every front end shares), the tokenizer and chat format of the loaded
checkpoint, the name clients address the model by, the API key (empty: none required), and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kimi_local.engine.service import EngineService
from kimi_local.server.metrics import ServerMetrics
from kimi_local.text.chat import ChatFormat
from kimi_local.text.tokenizer import KimiTokenizer


@dataclass
class ServerState:
    service: EngineService
    tokenizer: KimiTokenizer
    chat_format: ChatFormat
    model_name: str
    api_key: str = ""
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    on_close: Callable[[], None] | None = None  # e.g. the loaded model's: stop the expert store, save its profile

    @property
    def max_context(self) -> int:
        return self.service.engine.max_context

    def close(self) -> None:
        """Stop the engine thread (after the HTTP server has stopped), then whatever the model holds."""
        self.service.close()
        if self.on_close is not None:
            self.on_close()

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset(self.tokenizer.stop_ids)
