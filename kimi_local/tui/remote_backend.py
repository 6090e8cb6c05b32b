"""The chat backend for a model served by `kimi-local serve` (or any OpenAI-compatible server), over HTTP.

Replies stream from `POST /v1/chat/completions` with `stream: true` (server-sent events, one JSON chunk per
`data:` line, `[DONE]` at the end; `stream_options.include_usage` asks for the token counts). Stopping a reply
cancels the task reading the response, which closes the connection; the server sees the client go away and
frees the request's slot. Telemetry comes from `GET /metrics?experts=1` (Prometheus text), reading the
metrics kimi-local's server exports; whatever is missing shows as n/a.
"""

from __future__ import annotations

import json
import logging
from typing import AsyncIterator

import httpx
import numpy as np

from kimi_local.engine.routing_stats import RoutingSnapshot, entropy_bits
from kimi_local.tui.backend import BackendError, BackendInfo, ChatBackend, ReplyChunk
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.telemetry import CacheTelemetry, Telemetry
from kimi_local.tui.wire import DONE, async_sse_events, parse_prometheus, single_value

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
METRICS_TIMEOUT = 2.0


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean the same server."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BackendError(f"--url must start with http:// or https://, got {url!r}")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def error_message(status: int, body: bytes) -> str:
    """A readable line from an error response (OpenAI-shaped `{"error": {"message": ...}}` or plain text)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(data.get("detail"), str):
            text = data["detail"]
    return f"the server answered {status}: {text[:500] or '(no details)'}"


def _max_context(base: str, headers: dict) -> int | None:
    """kimi-local's `/health` tells the context length; other servers may not have it."""
    try:
        value = httpx.get(f"{base}/health", headers=headers, timeout=CONNECT_TIMEOUT).json().get("max_context")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class RemoteBackend(ChatBackend):
    def __init__(self, base_url: str, info: BackendInfo, api_key: str = ""):
        self.base_url = normalize_base_url(base_url)
        self.info = info
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def connect(cls, url: str, api_key: str = "") -> "RemoteBackend":
        """Check the server answers and learn its model name (blocking; called from the loading thread)."""
        base = normalize_base_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = httpx.get(f"{base}/v1/models", headers=headers, timeout=CONNECT_TIMEOUT)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the server at {base}: {exc}") from exc
        if response.status_code != 200:
            raise BackendError(error_message(response.status_code, response.content))
        try:
            models = response.json()["data"]
            model = models[0]
            name = model["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(f"{base}/v1/models did not list a model") from None
        return cls(base, BackendInfo(name, base, max_context=_max_context(base, headers)), api_key)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # created on the app's event loop, at first use
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                             timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None))
        return self._client

    async def stream_reply(self, messages: list[dict], settings: ChatSettings) -> AsyncIterator[ReplyChunk]:
        body = {
            "model": self.info.model_name, "messages": messages, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": settings.temperature,
            "top_p": settings.top_p, "max_tokens": settings.max_tokens,
        }
        finish_reason = None
        prompt_tokens = completion_tokens = None
        try:
            async with self._http().stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    raise BackendError(error_message(response.status_code, await response.aread()))
                async for data in async_sse_events(response.aiter_lines()):
                    if data == DONE:
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        chunk = None
                    if not isinstance(chunk, dict):
                        raise BackendError(f"the server sent a malformed stream chunk: {data[:200]!r}")
                    if isinstance(chunk.get("error"), dict):
                        raise BackendError(f"the server reported: {chunk['error'].get('message', chunk['error'])}")
                    usage = chunk.get("usage")
                    if isinstance(usage, dict):
                        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                        completion_tokens = usage.get("completion_tokens", completion_tokens)
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        if text:
                            yield ReplyChunk(text, 1)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise BackendError(f"lost the connection to {self.base_url}: {exc}") from exc
        yield ReplyChunk(finish_reason=finish_reason or "stop", prompt_tokens=prompt_tokens,
                         completion_tokens=completion_tokens)

    async def telemetry(self) -> Telemetry:
        try:
            response = await self._http().get("/metrics", params={"experts": "1"}, timeout=METRICS_TIMEOUT)
        except httpx.HTTPError as exc:
            log.debug("metrics request failed: %s", exc)
            return Telemetry(max_context=self.info.max_context)
        if response.status_code != 200:
            return Telemetry(max_context=self.info.max_context)
        return telemetry_from_metrics(response.text, self.info.max_context)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Outside the event loop nothing is left to do: the client's sockets close with it."""
        self._client = None


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def telemetry_from_metrics(text: str, max_context: int | None = None) -> Telemetry:
    """Telemetry from the Prometheus text of kimi-local's server (`kimi_local/server/metrics.py`).

    The expert cache's gauges are named after its snapshot fields (`kimi_expert_cache_<field>`), per tier
    with a `tier` label when the snapshot nests them; both the flat and the per-tier forms are read."""
    m = parse_prometheus(text)
    hit_rate = single_value(m, "kimi_expert_cache_hit_rate")
    if hit_rate is None:
        hits, misses = single_value(m, "kimi_expert_cache_hits"), single_value(m, "kimi_expert_cache_misses")
        if hits is not None and misses is not None and hits + misses > 0:
            hit_rate = hits / (hits + misses)

    def resident(tier: str) -> float | None:
        for name, labels in ((f"kimi_expert_cache_{tier}_resident_bytes", {}), (f"kimi_expert_cache_{tier}_bytes", {}),
                             ("kimi_expert_cache_resident_bytes", {"tier": tier})):
            value = single_value(m, name, **labels)
            if value is not None:
                return value
        return None

    ram, gpu = resident("ram"), resident("gpu")
    cache = None
    if hit_rate is not None or ram is not None or gpu is not None:
        cache = CacheTelemetry(hit_rate, _int(ram), _int(gpu))
    return Telemetry(
        process_rss_bytes=_int(single_value(m, "process_resident_memory_bytes")),
        free_ram_bytes=_int(single_value(m, "kimi_memory_available_bytes")),
        cache=cache,
        routing=routing_from_metrics(m),
        max_context=max_context,
        running_requests=_int(single_value(m, "kimi_requests_running")),
        waiting_requests=_int(single_value(m, "kimi_queue_depth")),
    )


def routing_from_metrics(m: dict) -> RoutingSnapshot | None:
    """The per-layer expert load (`kimi_expert_load_share{layer, expert}`) as a routing snapshot."""
    cells: dict[int, dict[int, float]] = {}
    for labels, value in m.get("kimi_expert_load_share", ()):
        try:
            layer, expert = int(labels["layer"]), int(labels["expert"])
        except (KeyError, ValueError):
            continue
        if expert >= 0 and value >= 0:
            cells.setdefault(layer, {})[expert] = value
    if not cells:
        return None
    layer_ids = tuple(sorted(cells))
    num_experts = max(max(row) for row in cells.values()) + 1
    load = np.zeros((len(layer_ids), num_experts))
    for r, layer in enumerate(layer_ids):
        for expert, value in cells[layer].items():
            load[r, expert] = value
    totals = load.sum(axis=1, keepdims=True)
    load = np.divide(load, totals, out=np.zeros_like(load), where=totals > 0)
    routed = single_value(m, "kimi_routed_tokens_total")
    return RoutingSnapshot(layer_ids, num_experts, load, entropy_bits(load), int(routed or 0),
                           single_value(m, "kimi_prefetch_recall"))
