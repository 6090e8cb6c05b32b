"""Real servers on a checkpoint for the reliability suite and `benchmarks/reliability.py`.

Everything is the production code path: `engine.loader.load` (the model over the expert store, with the auto
RAM budget or one of a few slots so that misses stream from the shards), the engine service, the FastAPI app,
uvicorn on a loopback port chosen by the kernel. Only the sizes are small, and the routing profile is off so
tests never write into the user's cache directory.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.store import ExpertStore
from kimi_local.config import CacheSection, Config, EngineSection
from kimi_local.engine.engine import Engine
from kimi_local.engine.loader import LoadedModel, load
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.sizing import GiB
from kimi_local.server.app import create_app
from kimi_local.server.runner import ServerThread, build_state
from kimi_local.server.state import ServerState

MODEL_NAME = "kimi-tiny"


@dataclass(frozen=True)
class Sizes:
    max_context: int = 128
    max_batch: int = 4
    max_queue: int = 16
    prefill_chunk: int = 64


def config_for(sizes: Sizes, ram_bytes: int = 0, profile: bool = False) -> Config:
    """Torch expert kernels (no JIT wait); `ram_bytes` 0: the auto RAM budget (every expert of a tiny model)."""
    engine = EngineSection(expert_backend="torch", max_context=sizes.max_context, max_batch=sizes.max_batch,
                           prefill_chunk=sizes.prefill_chunk)
    return Config(engine=engine, cache=CacheSection(ram_gb=ram_bytes / GiB, profile=profile))


def load_plain(model_dir: Path, sizes: Sizes) -> LoadedModel:
    """The loader's own path: the expert store with the auto budget, no routing profile written."""
    return load(model_dir, config_for(sizes))


def load_cached(model_dir: Path, sizes: Sizes, num_slots: int, prefetch: bool = True) -> LoadedModel:
    """The loader's path with a RAM budget of `num_slots` expert slots, so misses stream from the shards."""
    with Checkpoint.open(model_dir) as ckpt:
        slot = expert_slot_bytes(ckpt)
    loaded = load(model_dir, config_for(sizes, ram_bytes=num_slots * slot + slot // 2))
    loaded.model.prefetch_enabled = prefetch
    assert loaded.experts.store.arena.num_slots == num_slots
    return loaded


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
        loaded.close()


@contextmanager
def held_engine(engine: Engine, ready: Callable[[], bool], timeout: float = 30.0) -> Iterator[None]:
    """The engine takes no step until `ready()` (e.g. until all of a scenario's requests have arrived), so what
    happens next does not depend on thread timing: they prefill one after the other, then decode in step."""
    real_step = engine.step

    def held_step():
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.001)
        engine.step = real_step
        return real_step()

    engine.step = held_step
    try:
        yield
    finally:
        engine.step = real_step
