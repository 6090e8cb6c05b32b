"""Decode steps as per-layer GPU segments between expert calls, replayed as CUDA graphs on CUDA.

On CUDA one decode step launches a few dozen small kernels per layer (norms, fp8 GEMVs, rope, the latent
attention, the router's top-k), each costing microseconds of launch overhead for microseconds of work. A CUDA
graph replays a recorded kernel sequence with one launch. The whole step cannot be one graph: every MoE layer
hands its routed work to `model.experts` on the host (CPU kernels fed by the expert store) and gets a tensor
back. What can be recorded is each layer's GPU part between two expert calls, a *segment*:

    MoE layer:    h -> (h + MLA(norm(h)) = h1, x = post_norm(h1), router ids and weights of x,
                        shared_expert(x), the next MoE layer's ids predicted from h1)
    dense layer:  h -> (h1, mlp(post_norm(h1)), the next layer's prediction)
    head:         h -> float32 logits of final_norm(h)

and between segments the host part: routing hooks, the prefetch hint, `model.experts` on the real rows, the
residual adds.

Fixed shapes. A graph replays fixed addresses and shapes, so every segment runs over all S slots of the KV
cache whatever the batch: row s of every buffer is slot s, the slot-major layout the latent attention kernel
reads in place. Padded batch size: S only, no buckets (a decode GEMV reads each weight once for all rows, so
extra rows cost little). Slots without a request in this step are idle: free, or running but left out of the
batch (the engine retries a failed batch request by request). Idle rows compute garbage that is dropped;
their length is 1 and their position 0, and their KV write stores back the value it read, so their cache is
never changed. Per step the host writes positions, lengths and an active flag per slot into one small buffer
per device and the batch's hidden rows into the first segment's input; after each segment the real rows are
gathered out (copies: a replay overwrites its outputs, and all graphs of a runner share one memory pool).

One code path, two modes: eager calls the segment functions (CPU tests, layers the placement spilled to the
CPU, the fallback when a capture fails); captured replays one `torch.cuda.CUDAGraph` per CUDA segment,
recorded at the first decode step after a warm-up run on a side stream. Attention uses the model's latent
kernel (Triton on CUDA) over the whole cache with per-slot lengths; a model without one (latent widths that
are not powers of two) uses `mla_decode_reference` instead, over the whole cache on CUDA (fixed shape) and up
to the longest sequence on the CPU.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from kimi_local.model.deepseek import Batch, Block, KimiModel, KVCache, MoE

log = logging.getLogger(__name__)

WARMUP_RUNS = 2  # eager runs on the capture stream first: Triton compiles, cuBLAS sets up its workspace


class SegmentOut(NamedTuple):
    h: torch.Tensor  # [S, hidden] after the layer's attention, residual added
    x: torch.Tensor | None  # [S, hidden] post-attention norm: the routed experts' input (MoE layers)
    topk_ids: torch.Tensor | None  # [S, k] int64 (MoE layers)
    topk_weights: torch.Tensor | None  # [S, k] float32 (MoE layers)
    ffn_out: torch.Tensor | None  # [S, hidden] the shared expert (MoE; None without one) or the dense MLP
    predicted: torch.Tensor | None  # [S, k] next MoE layer's ids from h (when prefetching, same device only)


class SlotInputs:
    """One device's per-step inputs, slot-major: row 0 position, row 1 attention length (1 when idle), row 2
    active flag. Written once per step; every segment on the device reads it."""

    def __init__(self, num_slots: int, device: torch.device):
        self.meta = torch.zeros(3, num_slots, dtype=torch.int64, device=device)
        self.meta[1] = 1
        self.rows = torch.arange(num_slots, device=device)

    @property
    def positions(self) -> torch.Tensor:
        return self.meta[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.meta[1]

    @property
    def active(self) -> torch.Tensor:
        return self.meta[2]


class Segment:
    """A segment function `fn(h [S, hidden], bound) -> outputs` on one device, called directly (eager) or
    replayed from a graph recorded over a static input buffer."""

    def __init__(self, name: str, fn: Callable, device: torch.device):
        self.name, self.fn, self.device = name, fn, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: torch.Tensor | None = None
        self.static_out = None

    def __call__(self, h: torch.Tensor, bound: int | None):
        if self.graph is None:
            return self.fn(h, bound)
        self.static_in.copy_(h)
        self.graph.replay()
        return self.static_out

    def capture(self, example: torch.Tensor, stream: torch.cuda.Stream, pool) -> None:
        static_in = example.clone()
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # The outer context restores the current stream even when the graph's own exit fails half-way.
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):
                self.fn(static_in, None)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                static_out = self.fn(static_in, None)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph, self.static_in, self.static_out = graph, static_in, static_out

    def release(self) -> None:
        self.graph = self.static_in = self.static_out = None


class DecodeRunner:
    """Runs decode batches of `model` over `cache` segment by segment; `capture` records the CUDA segments as
    graphs at the first step (eager otherwise). Call it with a decode `Batch`, as `model(batch, cache)`."""

    graph_device = "cuda"  # the device type whose segments are recorded as graphs

    def __init__(self, model: KimiModel, cache: KVCache, capture: bool = True):
        if len(cache.kv) != len(model.layers):
            raise ValueError(f"cache has {len(cache.kv)} layers, the model {len(model.layers)}")
        self.model, self.cache, self.capture = model, cache, capture
        self.num_slots = cache.num_slots
        self.segments: list[Segment] = []
        self._built_for: bool | None = None  # model.prefetch_enabled the segments were built with
        self._devices: list[torch.device] = []  # per layer, as its weights report it ("cuda:0", not "cuda")
        self._inputs: dict[torch.device, SlotInputs] = {}
        self._h0: torch.Tensor | None = None  # the first segment's input rows

    @property
    def is_captured(self) -> bool:
        return any(s.graph is not None for s in self.segments)

    # -- segments ------------------------------------------------------------------------------------------
    def _attention(self, i: int, layer: Block, h: torch.Tensor, bound: int | None) -> torch.Tensor:
        """h + MLA(norm(h)) for all slots, absorbed form (as MLA.decode), over the slot-major cache in place."""
        attn, c = layer.self_attn, self.model.config
        inp = self._inputs[self._devices[i]]
        x = layer.input_layernorm(h)
        q_nope, q_pe, latent, k_pe = attn._project(x, inp.positions)
        kv_all, pe_all = self.cache.kv[i], self.cache.pe[i]
        rows, positions = inp.rows, inp.positions
        active = inp.active.bool()[:, None]
        kv_all[rows, positions] = torch.where(active, latent, kv_all[rows, positions])  # idle: write back
        pe_all[rows, positions] = torch.where(active, k_pe, pe_all[rows, positions])
        w_uk = attn.kv_b[:, : c.qk_nope_head_dim]  # [H, dn, r]
        w_uv = attn.kv_b[:, c.qk_nope_head_dim :]  # [H, dv, r]
        q_latent = torch.einsum("bhd,hdc->bhc", q_nope, w_uk)  # [S, H, r]
        kernel = attn.latent_attention
        if kernel is None:
            from kimi_local.kernels.triton_mla import mla_decode_reference as kernel

            if bound is not None:
                kv_all, pe_all = kv_all[:, :bound], pe_all[:, :bound]
        context = kernel(q_latent, q_pe, kv_all, pe_all, attn.scale, inp.lengths)  # [S, H, r]
        out = torch.einsum("bhc,hdc->bhd", context, w_uv)
        return h + attn.o_proj(out.reshape(h.shape[0], c.num_attention_heads * c.v_head_dim))

    def _layer_segment(self, i: int, h: torch.Tensor, bound: int | None) -> SegmentOut:
        layer = self.model.layers[i]
        h1 = self._attention(i, layer, h, bound)
        x = layer.post_attention_layernorm(h1)
        predicted = None
        nxt = self._next_moe(i)
        if nxt is not None and self._devices[i + 1] == self._devices[i]:
            predicted = nxt.mlp.router(nxt.post_attention_layernorm(h1))[0]
        if isinstance(layer.mlp, MoE):
            ids, weights = layer.mlp.router(x)
            shared = layer.mlp.shared(x) if layer.mlp.shared is not None else None
            return SegmentOut(h1, x, ids, weights, shared, predicted)
        return SegmentOut(h1, None, None, None, layer.mlp(x), predicted)

    def _head_segment(self, h: torch.Tensor, bound: int | None) -> torch.Tensor:
        return F.linear(self.model.norm(h), self.model.lm_head).float()

    def _next_moe(self, i: int) -> Block | None:
        """Layer i+1 when the model prefetches and it is an MoE layer."""
        layers = self.model.layers
        if not self.model.prefetch_enabled or i + 1 >= len(layers) or not isinstance(layers[i + 1].mlp, MoE):
            return None
        return layers[i + 1]

    def _build(self) -> None:
        model, s = self.model, self.num_slots
        for seg in self.segments:
            seg.release()
        self._devices = [layer.input_layernorm.weight.device for layer in model.layers]
        self._inputs = {d: SlotInputs(s, d) for d in {*self._devices, model.lm_head.device}}
        self.segments = [Segment(f"layer {i}", lambda h, bound, i=i: self._layer_segment(i, h, bound), d)
                         for i, d in enumerate(self._devices)]
        self.segments.append(Segment("head", self._head_segment, model.lm_head.device))
        self._h0 = torch.zeros(s, model.config.hidden_size, dtype=model.dtype, device=self._devices[0])
        self._built_for = model.prefetch_enabled
        if self.capture:
            self._capture()

    def _capture(self) -> None:
        """Records every segment on a `graph_device`, or none: a failure leaves the whole runner eager."""
        todo = [seg for seg in self.segments if seg.device.type == self.graph_device]
        if not todo:
            return
        t0 = time.perf_counter()
        resources: dict[torch.device, tuple] = {}
        example = torch.zeros(self.num_slots, self.model.config.hidden_size, dtype=self.model.dtype)
        for seg in todo:
            try:
                if seg.device not in resources:
                    resources[seg.device] = self._capture_resources(seg.device)
                seg.capture(example.to(seg.device), *resources[seg.device])
            except Exception as exc:  # whatever went wrong, the eager segments still compute the step
                log.warning("CUDA graph capture of decode segment '%s' failed (%s: %s); decode steps run eagerly",
                            seg.name, type(exc).__name__, exc)
                for other in self.segments:
                    other.release()
                for device in resources:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                return
        log.info("captured %d CUDA graphs for decode steps over %d slots in %.2f s", len(todo), self.num_slots,
                 time.perf_counter() - t0)

    @staticmethod
    def _capture_resources(device: torch.device) -> tuple:
        """A side stream for warm-up and capture, and one memory pool shared by the device's graphs (they
        replay one after another, and the runner copies out of each what it keeps)."""
        return torch.cuda.Stream(device), torch.cuda.graph_pool_handle()

    # -- a step --------------------------------------------------------------------------------------------
    def _check(self, batch: Batch) -> tuple[list[int], list[int]]:
        if batch.is_prefill:
            raise ValueError("DecodeRunner runs decode batches; a prefill chunk goes through the model's forward")
        slots, positions = batch.slots.tolist(), batch.positions.tolist()
        n = len(slots)
        if n == 0 or len(positions) != n or batch.input_ids.shape != (n,):
            raise ValueError(f"a decode batch needs one input id, position and slot per request, got "
                             f"{tuple(batch.input_ids.shape)} ids, {len(positions)} positions, {n} slots")
        if len(set(slots)) != n or not all(0 <= s < self.num_slots for s in slots):
            raise ValueError(f"batch.slots must be distinct slots in [0, {self.num_slots}), got {slots}")
        if not all(0 <= p < self.cache.max_len for p in positions):
            raise ValueError(f"batch.positions must lie in [0, {self.cache.max_len}) (the cache's rows), "
                             f"got {positions}")
        return slots, positions

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> torch.Tensor:
        """float32 logits [N, vocab], one row per request of the batch, in its order."""
        slots, positions = self._check(batch)
        model = self.model
        if self._built_for != model.prefetch_enabled:
            self._build()
        meta = torch.zeros(3, self.num_slots, dtype=torch.int64)
        meta[1] = 1
        index = torch.tensor(slots)
        meta[0, index] = torch.tensor(positions)
        meta[1, index] = torch.tensor(positions) + 1
        meta[2, index] = 1
        rows = {}
        for device, inputs in self._inputs.items():
            inputs.meta.copy_(meta)
            rows[device] = index.to(device)
        bound = max(positions) + 1  # the longest sequence: how far eager CPU attention has to read

        h = F.embedding(batch.input_ids, model.embed_tokens)
        self._h0[rows[self._h0.device]] = h.to(self._h0.device)
        h = self._h0
        predicted = None  # this layer's experts as guessed after the previous layer's attention
        for i, (layer, seg) in enumerate(zip(model.layers, self.segments)):
            r = rows[seg.device]
            out = seg(h.to(seg.device), bound if seg.device.type == "cpu" else None)
            next_predicted = self._prefetch(i, out, r)
            if isinstance(layer.mlp, MoE):
                h = self._moe(i, layer.mlp, out, r, predicted)
            else:
                h = out.h + out.ffn_out
            predicted = next_predicted
        head = self.segments[-1]
        logits = head(h.to(head.device), bound if head.device.type == "cpu" else None)
        return logits[rows[head.device]]

    def _prefetch(self, i: int, out: SegmentOut, rows: torch.Tensor) -> torch.Tensor | None:
        """The next MoE layer's predicted ids for the real rows, handed to the expert backend as a hint."""
        nxt = self._next_moe(i)
        if nxt is None:
            return None
        if out.predicted is not None:
            ids = out.predicted[rows]
        else:  # the next layer sits on another device (placement spill): predict there, eagerly
            ids = nxt.mlp.router(nxt.post_attention_layernorm(out.h[rows].to(self._devices[i + 1])))[0]
        self.model.experts.prefetch(i + 1, ids)
        return ids

    def _moe(self, i: int, moe: MoE, out: SegmentOut, rows: torch.Tensor,
             predicted: torch.Tensor | None) -> torch.Tensor:
        """Routed experts on the real rows, then h1 + (routed + shared) there; idle rows keep h1."""
        ids, weights = out.topk_ids[rows], out.topk_weights[rows]
        for hook in self.model.routing_hooks:
            hook(i, ids, predicted)
        ffn = moe.experts(i, out.x[rows], ids, weights)
        if out.ffn_out is not None:
            ffn = ffn + out.ffn_out[rows]
        return out.h.index_put((rows,), out.h[rows] + ffn)
