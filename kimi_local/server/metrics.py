"""Server metrics in the Prometheus text format (version 0.0.4), rendered on demand from live sources.

Sources, each optional so the server runs with any engine:
- the engine service's `stats()`: decode tokens/s, queue depth, running requests, token and request counters;
- a `RoutingStats` hook on the model (engine/routing_stats.py): per-layer expert load and routing entropy;
- the expert backend's cache snapshot: whatever `stats()` / `snapshot()` callable the backend exposes. Its
  shape is not fixed here: a mapping, dataclass or plain object whose numeric fields become
  `kimi_expert_cache_<field>` gauges (a nested mapping becomes the same gauges with a `tier` label). The hit
  rate is derived from `hits` and `misses` when the snapshot does not give it; `resident_bytes` is passed on.
- HTTP request counts by endpoint and status, kept here;
- the process's resident memory and the memory still available (psutil).

Per-expert load (num MoE layers x num experts series: 23k for Kimi-K2) is only rendered when asked for
(`/metrics?experts=1`); by default each layer reports its entropy and its hottest expert's share.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from kimi_local.engine.routing_stats import RoutingStats
from kimi_local.engine.service import ServiceStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Writer:
    """Collects samples by metric family, so each family is written together under one HELP/TYPE."""

    def __init__(self):
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def metric(self, name: str, kind: str, help_text: str, value: float,
               labels: Mapping[str, str] | None = None) -> None:
        family = self._families.setdefault(name, (kind, help_text, []))
        label_text = ""
        if labels:
            label_text = "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"
        family[2].append(f"{name}{label_text} {_number(value)}")

    def text(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


def numeric_fields(snapshot: Any) -> dict[str, Any]:
    """The numeric (and nested-mapping) fields of a snapshot given as mapping, dataclass or object."""
    if snapshot is None:
        return {}
    if isinstance(snapshot, Mapping):
        items = dict(snapshot)
    elif dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        items = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)}
    else:
        attributes = vars(snapshot) if hasattr(snapshot, "__dict__") else {}
        items = {k: v for k, v in attributes.items() if not k.startswith("_")}
        for name in dir(type(snapshot)):  # properties such as hit_rate
            if not name.startswith("_") and isinstance(getattr(type(snapshot), name, None), property):
                items[name] = getattr(snapshot, name)
    out: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = value
        elif isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            nested = {k: v for k, v in numeric_fields(value).items() if not isinstance(v, dict)}
            if nested:
                out[str(key)] = nested
    return out


def _with_hit_rate(fields: dict[str, Any]) -> dict[str, Any]:
    if "hit_rate" not in fields and "hits" in fields and "misses" in fields:
        total = fields["hits"] + fields["misses"]
        fields = {**fields, "hit_rate": fields["hits"] / total if total else 0.0}
    return fields


class ServerMetrics:
    def __init__(self, routing: RoutingStats | None = None, expert_cache: Callable[[], Any] | None = None):
        self.routing = routing
        self.expert_cache = expert_cache
        self.started = time.time()
        self._lock = threading.Lock()
        self._http: Counter[tuple[str, int]] = Counter()

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._http[(endpoint, status)] += 1

    def http_counts(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._http)

    def render(self, stats: ServiceStats, max_queue: int, max_batch: int, per_expert: bool = False) -> str:
        w = _Writer()
        self._service(w, stats, max_queue, max_batch)
        self._routing(w, per_expert)
        self._cache(w)
        for (endpoint, status), count in sorted(self.http_counts().items()):
            w.metric("kimi_http_requests_total", "counter", "HTTP requests answered, by endpoint and status.",
                     count, {"endpoint": endpoint, "status": str(status)})
        w.metric("kimi_uptime_seconds", "gauge", "Seconds since the server started.", time.time() - self.started)
        self._memory(w)
        return w.text()

    @staticmethod
    def _memory(w: _Writer) -> None:
        w.metric("process_resident_memory_bytes", "gauge", "Resident memory of the server process.",
                 psutil.Process().memory_info().rss)
        w.metric("kimi_memory_available_bytes", "gauge", "Memory the system can still give without swapping.",
                 psutil.virtual_memory().available)

    @staticmethod
    def _service(w: _Writer, s: ServiceStats, max_queue: int, max_batch: int) -> None:
        w.metric("kimi_decode_tokens_per_second", "gauge",
                 "Generated tokens per second over the last few seconds, all requests together.",
                 s.decode_tokens_per_second)
        w.metric("kimi_prefill_tokens_per_second", "gauge", "Prompt tokens per second of prefill steps (lifetime).",
                 s.prefill_tokens_per_second)
        w.metric("kimi_queue_depth", "gauge", "Requests waiting for a KV slot.", s.waiting)
        w.metric("kimi_queue_capacity", "gauge", "Waiting requests allowed before new ones get 429.", max_queue)
        w.metric("kimi_requests_running", "gauge", "Requests holding a KV slot (decoded together).", s.running)
        w.metric("kimi_kv_slots", "gauge", "KV cache slots: the most requests decoded together.", max_batch)
        w.metric("kimi_generated_tokens_total", "counter", "Tokens generated.", s.generated_tokens)
        w.metric("kimi_prompt_tokens_total", "counter", "Prompt tokens prefilled.", s.prompt_tokens)
        w.metric("kimi_prompt_tokens_cached_total", "counter",
                 "Prompt tokens not prefilled: their KV rows were reused from a slot.", s.cached_prompt_tokens)
        w.metric("kimi_requests_finished_total", "counter", "Engine requests finished (any reason).",
                 s.finished_requests)
        w.metric("kimi_requests_failed_total", "counter", "Engine requests that failed.", s.failed_requests)

    def _routing(self, w: _Writer, per_expert: bool) -> None:
        if self.routing is None:
            return
        snap = self.routing.snapshot()
        w.metric("kimi_routed_tokens_total", "counter", "Tokens routed through the MoE layers.", snap.routed_tokens)
        if snap.prefetch_recall is not None:
            w.metric("kimi_prefetch_recall", "gauge", "Share of chosen experts that the prefetcher predicted.",
                     snap.prefetch_recall)
        for row, layer in enumerate(snap.layer_ids):
            labels = {"layer": str(layer)}
            load = snap.load[row]
            w.metric("kimi_routing_entropy_bits", "gauge",
                     "Entropy of the recent expert-choice distribution per MoE layer (log2(E): perfectly spread).",
                     float(snap.entropy_bits[row]), labels)
            w.metric("kimi_expert_load_max_share", "gauge",
                     "Share of recent routed slots taken by the layer's most used expert.",
                     float(load.max()) if load.size else 0.0, labels)
        if per_expert:
            for row, layer in enumerate(snap.layer_ids):
                for expert, share in enumerate(snap.load[row]):
                    w.metric("kimi_expert_load_share", "gauge", "Share of recent routed slots per layer and expert.",
                             float(share), {"layer": str(layer), "expert": str(expert)})

    def _cache(self, w: _Writer) -> None:
        if self.expert_cache is None:
            return
        try:
            fields = _with_hit_rate(numeric_fields(self.expert_cache()))
        except Exception:  # a metrics scrape must never fail because a backend's snapshot did
            log.exception("expert cache snapshot failed")
            return
        for key, value in sorted(fields.items()):
            name = "kimi_expert_cache_" + _NAME_BAD.sub("_", key)
            if isinstance(value, dict):
                continue
            w.metric(name, "gauge", f"Expert cache: {key}.", value)
        for tier, nested in sorted((k, v) for k, v in fields.items() if isinstance(v, dict)):
            for key, value in sorted(_with_hit_rate(nested).items()):
                w.metric("kimi_expert_cache_" + _NAME_BAD.sub("_", key), "gauge", f"Expert cache: {key}.", value,
                         {"tier": tier})
