"""From the `[cache]` configuration to a running expert store and the backend that computes from it.

The loader decides the byte budgets (`sizing.resolve_ram_cache_bytes`, the GPU tier's share of the GPU
budget) and the kernel; this wires the rest: pinned experts, I/O threads, the per-model routing profile and
the warm start that reads the profile's most used experts ahead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kimi_local.cache.backend import CachedExperts
from kimi_local.cache.profile import default_profile_path
from kimi_local.cache.store import ExpertStore
from kimi_local.config import Config, parse_pinned
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.experts import ExpertSource, RoutedExperts


def build_store(ckpt: Checkpoint, config: Config, model_dir: str | Path, ram_cache_bytes: int,
                gpu_cache_bytes: int = 0, gpu_device: str | None = None, warm_start: bool = True) -> ExpertStore:
    profile_path = default_profile_path(model_dir, ckpt.config) if config.cache.profile else None
    store = ExpertStore(ckpt, ram_cache_bytes, gpu_budget_bytes=gpu_cache_bytes,
                        num_io_threads=config.cache.io_threads, pinned=parse_pinned(config.cache.pinned),
                        profile_path=profile_path, gpu_device=gpu_device)
    if warm_start:
        store.warm_start()
    return store


def build_cached_experts(ckpt: Checkpoint, config: Config, model_dir: str | Path, ram_cache_bytes: int,
                         make_kernel: Callable[[ExpertSource], RoutedExperts] | None = None,
                         gpu_cache_bytes: int = 0, gpu_device: str | None = None) -> CachedExperts:
    """The `RoutedExperts` backend for the loader: `make_kernel(source)` builds the CPU kernel backend
    (e.g. `lambda s: NumbaExperts(s, threads)`; default the torch reference)."""
    store = build_store(ckpt, config, model_dir, ram_cache_bytes, gpu_cache_bytes, gpu_device)
    return CachedExperts(store, make_kernel)
