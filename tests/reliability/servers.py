"""Real servers on a checkpoint for the reliability suite and `benchmarks/reliability.py`.

Everything is the production code path: the checkpoint loaded by `engine.loader.load` (or, with a RAM budget,
the model over the expert store: `CachedExperts(ExpertStore)`, the way the loader will wire it), the engine
service, the FastAPI app, uvicorn on a loopback port chosen by the kernel. Only the sizes are small.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kimi_local.cache.backend import CachedExperts
from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.store import ExpertStore
from kimi_local.config import Config, EngineSection
from kimi_local.engine.engine import Engine
from kimi_local.engine.loader import LoadedModel, load
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.server.app import create_app
from kimi_local.server.runner import ServerThread, build_state
from kimi_local.server.state import ServerState

MODEL_NAME = "kimi-tiny"


@dataclass(frozen=True)
class Sizes:
    max_context: int = 256
    max_batch: int = 4
    max_queue: int = 16
    prefill_chunk: int = 64


def load_plain(model_dir: Path, sizes: Sizes) -> LoadedModel:
    """The loader's own path with the torch expert backend (fast to start, no JIT)."""
    config = Config(engine=EngineSection(expert_backend="torch", max_context=sizes.max_context,
                                         max_batch=sizes.max_batch, prefill_chunk=sizes.prefill_chunk))
    return load(model_dir, config)


def load_cached(model_dir: Path, sizes: Sizes, num_slots: int, num_io_threads: int = 2,
                profile_path: Path | None = None) -> LoadedModel:
    """The model over an expert store of `num_slots` RAM slots (misses stream from the shards)."""
    ckpt = Checkpoint.open(model_dir)
    store = ExpertStore(ckpt, num_slots * expert_slot_bytes(ckpt), num_io_threads=num_io_threads,
                        profile_path=profile_path)
    experts = CachedExperts(store)
    model = KimiModel.from_checkpoint(ckpt, experts)
    engine = Engine(model, sizes.max_context, sizes.max_batch, sizes.prefill_chunk)
    return LoadedModel(ckpt, model, engine, experts, Path(model_dir))


@dataclass
class Running:
    url: str
    state: ServerState
    thread: ServerThread
    loaded: LoadedModel

    @property
    def engine(self) -> Engine:
        return self.state.service.engine

    @property
    def store(self) -> ExpertStore | None:
        return getattr(self.loaded.experts, "store", None)


@contextmanager
def serve(loaded: LoadedModel, max_queue: int = 16, api_key: str = "", host: str = "127.0.0.1") -> Iterator[Running]:
    state = build_state(loaded, MODEL_NAME, api_key=api_key, max_queue=max_queue)
    thread = ServerThread(create_app(state), host=host).start()
    try:
        yield Running(thread.url, state, thread, loaded)
    finally:
        thread.stop()
        state.close()
        store = getattr(loaded.experts, "store", None)
        if store is not None:
            store.close()
