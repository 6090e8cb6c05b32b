"""Machine telemetry for the side panel: memory, GPU, expert cache and routing, as one immutable snapshot.

Every field may be None, meaning "not known here" (the panel shows n/a): no GPU, an expert backend without a
cache, a server that does not export a metric. Probes are plain functions so tests can check them against
psutil directly and backends can combine them.

Expert-cache statistics are read from the expert backend when it exposes them: a `stats()` (or `snapshot()`)
method on the backend or on its `store`, returning a mapping or a dataclass with any of

    hits, misses                       -> hit rate (or a ready `hit_rate` in [0, 1])
    ram_resident_bytes, gpu_resident_bytes   resident expert bytes per tier (`gpu_bytes` also read, as the
                                             expert store's GPU tier names it)
    ram_budget_bytes, gpu_budget_bytes       the tiers' byte budgets

or the per-tier form the server's metrics also read: {"ram": {"resident_bytes", "budget_bytes"}, "gpu": {...}}.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from kimi_local.engine.routing_stats import RoutingSnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheTelemetry:
    hit_rate: float | None = None
    ram_bytes: int | None = None
    gpu_bytes: int | None = None
    ram_budget_bytes: int | None = None
    gpu_budget_bytes: int | None = None


@dataclass(frozen=True)
class Telemetry:
    process_rss_bytes: int | None = None
    free_ram_bytes: int | None = None
    has_gpu: bool = False
    gpu_used_bytes: int | None = None
    gpu_total_bytes: int | None = None
    cache: CacheTelemetry | None = None
    routing: RoutingSnapshot | None = None
    max_context: int | None = None
    running_requests: int | None = None
    waiting_requests: int | None = None


def memory_probe() -> tuple[int, int]:
    """(resident bytes of this process, RAM available to new allocations)."""
    return psutil.Process().memory_info().rss, psutil.virtual_memory().available


def gpu_probe() -> tuple[bool, int | None, int | None]:
    """(has a GPU, bytes in use on it, its total bytes), for the current CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return False, None, None
    try:
        free, total = torch.cuda.mem_get_info()
    except RuntimeError as exc:  # a driver hiccup must not take the panel down
        log.debug("cuda.mem_get_info failed: %s", exc)
        return True, None, None
    return True, total - free, total


def _as_mapping(value: Any) -> Mapping | None:
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return None


def _stats_of(obj: Any) -> Mapping | None:
    for target in (obj, getattr(obj, "store", None)):
        for name in ("stats", "snapshot"):
            method = getattr(target, name, None)
            if callable(method):
                stats = _as_mapping(method())
                if stats is not None:
                    return stats
    return None


def _number(stats: Mapping, key: str) -> float | None:
    value = stats.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_cache_stats(experts: Any) -> CacheTelemetry | None:
    """The expert cache's statistics (see the module docstring), or None when the backend has no cache."""
    try:
        stats = _stats_of(experts)
    except Exception as exc:  # a statistics bug must never break the chat
        log.debug("expert cache stats failed: %s", exc)
        return None
    if stats is None:
        return None
    hit_rate = _number(stats, "hit_rate")
    hits, misses = _number(stats, "hits"), _number(stats, "misses")
    if hit_rate is None and hits is not None and misses is not None and hits + misses > 0:
        hit_rate = hits / (hits + misses)

    def tier_value(tier: str, key: str) -> int | None:
        value = _number(stats, f"{tier}_{key}")
        nested = _as_mapping(stats.get(tier))
        if value is None and nested is not None:
            value = _number(nested, key)
        return None if value is None else int(value)

    gpu_bytes = tier_value("gpu", "resident_bytes")
    if gpu_bytes is None and _number(stats, "gpu_bytes") is not None:
        gpu_bytes = int(_number(stats, "gpu_bytes"))
    return CacheTelemetry(hit_rate, tier_value("ram", "resident_bytes"), gpu_bytes,
                          tier_value("ram", "budget_bytes"), tier_value("gpu", "budget_bytes"))
