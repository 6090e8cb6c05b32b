"""`kimi-local bench stream` and `bench decode`: the expert store against the machine's own limits.

stream: expert reads through the store (layer steps of k experts, all misses, `num_io_threads` reads in
flight) against the disk's O_DIRECT sequential read rate, measured in the same run before and after.

decode: tokens/s of a checkpoint whose experts do not fit the RAM budget, with the store's hit rate, bytes
read from disk per token and RSS, beside the floor: the time the same bytes take at the measured RAM and disk
read rates (disk bytes / disk rate + RAM bytes / RAM rate, where RAM bytes are the resident weights one token
reads plus the expert bytes served from the cache).

Where the stalls come from (all per timed token, see `stats.py`): `misses` (reads nobody predicted),
`inflight_waits` (predicted, started, not done when the step came) and `prefetch_hits` (predicted and done);
`prefetch_started_share` is the share of needed reads a prefetch started early, `stall_fraction` the share a
step had to wait for, `stall_time_share` the share of the token's time spent waiting. Beside them the time budget:
`compute_seconds_per_token` (the token's time not spent waiting for reads) against `needed_disk_seconds_per_token`
(the needed reads at the measured disk rate) and `wasted_disk_seconds_per_token` (prefetches read and not used).
When the needed reads take longer than the compute they could hide behind, no prefetch can hide them all:
`bound` says which of the two limits the token.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from kimi_local.bandwidth import measure_disk_bandwidth, measure_memory_bandwidth
from kimi_local.cache.backend import CachedExperts
from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.store import ExpertStore
from kimi_local.model.checkpoint import Checkpoint

log = logging.getLogger(__name__)


def bench_stream(model_dir: str | Path, num_steps: int = 8, num_io_threads: int = 4, seed: int = 0,
                 probe_seconds: float = 3.0) -> dict:
    ckpt = Checkpoint.open(model_dir)
    c = ckpt.config
    k = c.num_experts_per_tok
    rng = np.random.default_rng(seed)
    pairs = [(layer, e) for layer in c.moe_layer_ids for e in range(c.n_routed_experts)]
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[: num_steps * k]]
    sequential = [measure_disk_bandwidth(Path(model_dir), seconds=probe_seconds)]
    store = ExpertStore(ckpt, (k + 1) * expert_slot_bytes(ckpt), num_io_threads=num_io_threads)
    try:
        start = time.perf_counter()
        for step in range(0, len(chosen), k):
            by_layer: dict[int, list[int]] = {}
            for layer, e in chosen[step : step + k]:
                by_layer.setdefault(layer, []).append(e)
            for layer, ids in by_layer.items():
                with store.lease(layer, ids):
                    pass
        elapsed = time.perf_counter() - start
        snap = store.snapshot()
    finally:
        store.close()
    sequential.append(measure_disk_bandwidth(Path(model_dir), seconds=probe_seconds))
    seq = float(np.mean([b.bytes_per_s for b in sequential]))
    rate = snap["bytes_read"] / elapsed
    return {
        "expert_read_gb_s": rate / 1e9,
        "sequential_gb_s": seq / 1e9,
        "sequential_method": sequential[0].method,
        "ratio": rate / seq,
        "experts_read": snap["misses"],
        "bytes_read": snap["bytes_read"],
        "direct_io_shards": snap["direct_io_shards"],
        "io_threads": num_io_threads,
    }


def resident_bytes_per_token(model: torch.nn.Module) -> int:
    """Weight bytes one decoded token reads outside the routed experts: every parameter except the embedding
    table (one row of it)."""
    total = 0
    for name, p in model.named_parameters():
        total += p.shape[-1] * p.element_size() if name == "embed_tokens" else p.numel() * p.element_size()
    return total


def _anonymous_rss(process: psutil.Process) -> int | None:
    """Resident anonymous memory (what the process allocated, without mapped file pages), Linux only."""
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def bench_decode(model_dir: str | Path, ram_cache_gb: float, num_tokens: int = 16, prompt_len: int = 8,
                 num_threads: int | None = None, num_io_threads: int = 2, kernel: str = "numba",
                 probe_seconds: float = 3.0) -> dict:
    from kimi_local.engine.engine import Engine
    from kimi_local.engine.sampling import SamplingParams
    from kimi_local.model.deepseek import KimiModel

    ckpt = Checkpoint.open(model_dir)
    c = ckpt.config
    threads = num_threads or psutil.cpu_count(logical=False) or 1
    budget = int(ram_cache_gb * (1 << 30))
    store = ExpertStore(ckpt, budget, num_io_threads=num_io_threads)
    if kernel == "numba":
        from kimi_local.kernels.cpu_experts import NumbaExperts

        experts = CachedExperts(store, lambda source: NumbaExperts(source, num_threads=threads))
    else:
        experts = CachedExperts(store)
    process = psutil.Process()
    model = KimiModel.from_checkpoint(ckpt, experts)
    ckpt.close()  # the resident weights are copies now and the store reads with its own descriptors: unmap
    resident = resident_bytes_per_token(model)
    all_experts = len(c.moe_layer_ids) * c.n_routed_experts
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, c.vocab_size - 256, prompt_len)]
    params = SamplingParams(temperature=0, max_new_tokens=num_tokens + 2)  # no stop ids: exactly that many
    engine = Engine(model, prompt_len + num_tokens + 8, 1, prefill_chunk=prompt_len)
    times: list[float] = []
    before = None
    try:
        last = time.perf_counter()
        for i, _token in enumerate(engine.generate(prompt, params)):
            now = time.perf_counter()
            if i == 1:  # the first decoded token pays for JIT and the cold start
                before = store.snapshot()
            elif i >= 2:
                times.append(now - last)
            last = now
        after = store.snapshot()
        rss = process.memory_info().rss
        rss_anon = _anonymous_rss(process)
    finally:
        store.close()
    if before is None or not times:
        raise RuntimeError("bench decode: the model stopped before decoding enough tokens")
    n = len(times)

    def per_token_of(name: str) -> float:
        return (after[name] - before[name]) / n

    lookups, hits = per_token_of("lookups"), per_token_of("hits")
    misses, inflight = per_token_of("misses"), per_token_of("inflight_waits")
    prefetch_hits = per_token_of("prefetch_hits")
    needed = misses + inflight + prefetch_hits
    disk_bytes = per_token_of("bytes_read")
    payload = store.payload_bytes
    ram_bytes = resident + hits * payload
    ram_bw = measure_memory_bandwidth(seconds=min(0.5, probe_seconds)).bytes_per_s
    disk_bw = measure_disk_bandwidth(Path(model_dir), seconds=probe_seconds).bytes_per_s
    floor = disk_bytes / disk_bw + ram_bytes / ram_bw
    per_token = float(np.median(times))
    stall = per_token_of("stall_seconds")
    compute = float(np.mean(times)) - stall
    needed_disk = needed * payload / disk_bw
    predicted = per_token_of("predicted")
    return {
        "tokens_per_s": 1.0 / per_token,
        "seconds_per_token": per_token,
        "floor_seconds_per_token": floor,
        "ratio_to_floor": per_token / floor,
        "hit_rate": hits / max(lookups, 1),
        "disk_gb_per_token": disk_bytes / 1e9,
        "needed_reads_per_token": needed,
        "misses_per_token": misses,
        "inflight_waits_per_token": inflight,
        "prefetch_hits_per_token": prefetch_hits,
        "prefetch_started_share": (inflight + prefetch_hits) / needed if needed else None,
        "not_ready_fraction": (misses + inflight) / needed if needed else None,
        "stall_fraction": per_token_of("waited_reads") / needed if needed else None,
        "stall_time_share": stall / float(np.mean(times)),
        "prefetch_recall": per_token_of("predicted_hits") / predicted if predicted else None,
        "prefetch_unused_per_token": per_token_of("prefetch_unused"),
        "prefetch_cancelled_per_token": per_token_of("prefetch_cancelled"),
        "compute_seconds_per_token": compute,
        "needed_disk_seconds_per_token": needed_disk,
        "wasted_disk_seconds_per_token": per_token_of("prefetch_unused") * payload / disk_bw,
        "bound": "disk" if needed_disk > compute else "compute",
        "ram_gb_per_token": ram_bytes / 1e9,
        "ram_read_gb_s": ram_bw / 1e9,
        "disk_read_gb_s": disk_bw / 1e9,
        "stall_seconds_per_token": stall,
        "stall_miss_seconds_per_token": per_token_of("stall_miss_seconds"),
        "rss_gb": rss / 1e9,
        "rss_anon_gb": rss_anon / 1e9 if rss_anon is not None else None,
        "ram_cache_budget_gb": budget / 1e9,
        "resident_weights_gb": resident / 1e9,
        "rss_over_budget": rss / (budget + resident),
        "cache_fraction": store.arena.num_slots / all_experts,
        "decoded_tokens": n,
        "threads": threads,
        "io_threads": num_io_threads,
    }
