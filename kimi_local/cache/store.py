"""`ExpertStore`: routed experts served from a RAM cache with a byte budget, misses streamed from the shards.

Tiers: the checkpoint's shards on disk; a RAM arena of equal slots (`slots.py`) sized by the budget; and
optionally a GPU tier of hot experts (`gpu_tier.py`). The model asks, the store decides (STYLE 6): which
experts stay is the eviction policy's call (`kimi_policy.py`), fed with every lookup.

Protocol. A compute kernel reads an expert's slot while it runs, so the slot must not be reused meanwhile:
`acquire(layer, expert_ids)` returns the weights of all of a layer step's experts, each leased (pinned) until
`release(layer, expert_ids)` (or use `with store.lease(...)`). `get_expert(layer, e)` (the `ExpertSource`
interface) leases implicitly until the first lookup of another layer, which is when a layer-by-layer model is
done with the previous one. `prefetch(layer, ids)` starts reads without waiting; prefetched experts are held
until that layer's acquire (or another layer's), so a miss of the current layer does not evict them. Experts
in the GPU tier are left out of prefetch: the GPU computes them, so a read or a slot for them would be waste.

Read order (`read_queue.py`). Reads wait in a priority queue and run one chunk at a time: demand reads first
(a predicted read the step now waits for is moved up to them), then prefetches by layer and by the router's
confidence; a running prefetch yields its thread to a demand read after its current chunk. At a layer's
acquire, the predicted reads for it that have not started and that the step does not use are cancelled.

Concurrency. One lock guards the tables; reads run on `num_io_threads` threads outside it (os.preadv
releases the GIL). A key being read has an in-flight entry with a future: a second request for it waits for
the same read, so an expert is read once however many ask. A failed read (short read, EIO, missing shard)
raises `ExpertReadError` naming the shard and tensor in every waiter; the last lease holder frees the slot and
drops the entry, so the cache stays consistent and a later request tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from kimi_local.cache.kimi_policy import KimiPolicy
from kimi_local.cache.policy import EvictionPolicy, PolicyError
from kimi_local.cache.profile import ProfileError, RoutingProfile, model_fingerprint
from kimi_local.cache.read_queue import ReadQueue
from kimi_local.cache.reader import (
    ExpertPlan, ExpertReadError, ShardFiles, expert_slot_bytes, expert_views, plan_expert, read_expert_steps,
)
from kimi_local.cache.slots import SlotArena
from kimi_local.cache.stats import StoreCounters
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.experts import ExpertWeights

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store cannot do what was asked within its budget (or was asked for something that does not exist)."""


@dataclass
class _Entry:
    slot: int
    plan: ExpertPlan
    future: Future
    leases: int = 0  # pins held: acquirers, the read in flight, a pending prefetch, a configured pin
    weights: ExpertWeights | None = None  # set once the read is done
    failed: bool = False
    prefetched: bool = False  # read by prefetch and not looked up since
    demand: bool = False  # read because a layer step asked for it unpredicted (a miss)


class ExpertStore:
    def __init__(
        self,
        checkpoint: Checkpoint,
        ram_budget_bytes: int,
        policy: EvictionPolicy | None = None,
        gpu_budget_bytes: int = 0,
        num_io_threads: int = 4,
        pinned: Iterable[tuple[int, int]] = (),
        profile_path: str | Path | None = None,
        use_direct_io: bool = True,
        populate: bool = False,
        gpu_device: str | None = None,
    ):
        c = checkpoint.config
        self.checkpoint = checkpoint
        self.num_layers = c.num_hidden_layers  # keys span all layer indices; dense layers stay unused
        self.num_experts = c.n_routed_experts
        self.top_k = c.num_experts_per_tok
        self.slot_bytes = expert_slot_bytes(checkpoint)
        all_experts = len(c.moe_layer_ids) * self.num_experts
        num_slots = min(int(ram_budget_bytes) // self.slot_bytes, all_experts)  # more slots could never be used
        if num_slots < 1:
            raise StoreError(f"RAM expert-cache budget of {ram_budget_bytes} bytes holds no expert: one needs "
                             f"{self.slot_bytes} bytes")
        if num_io_threads < 1:
            raise StoreError(f"num_io_threads = {num_io_threads} must be >= 1")
        self.ram_budget_bytes = int(ram_budget_bytes)
        self.policy = policy or KimiPolicy(self.num_layers, self.num_experts, top_k=self.top_k, capacity=num_slots)
        if (self.policy.num_layers, self.policy.num_experts) != (self.num_layers, self.num_experts):
            raise StoreError(f"policy is sized {self.policy.num_layers} x {self.policy.num_experts}, the model has "
                             f"{self.num_layers} layers x {self.num_experts} experts")
        self.arena = SlotArena(num_slots, self.slot_bytes, populate=populate)
        self.files = ShardFiles(use_direct_io)
        self._reads = ReadQueue(num_io_threads)
        self._num_demand = 0  # demand reads so far: their order in the read queue
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._plans: dict[int, ExpertPlan] = {}
        self._held: dict[int, list[int]] = {}  # layer -> keys held for it by prefetch
        self._prefetch_read: dict[int, set[int]] = {}  # layer -> keys whose read a prefetch started
        self._predicted: dict[int, set[int]] = {}  # layer -> keys predicted for its next step
        self._implicit: tuple[int, dict[int, ExpertWeights]] = (-1, {})  # get_expert's lease: layer, weights
        self._pinned: list[int] = []
        self._num_leased = 0  # entries with leases > 0: slots that cannot be evicted now
        self.counters = StoreCounters()
        self.payload_bytes = 0  # one expert's tensor bytes (set by the first plan)
        self.profile_path = Path(profile_path) if profile_path else None
        first_moe = c.moe_layer_ids[0] if c.moe_layer_ids else 0
        self.profile = RoutingProfile(self.num_layers, self.num_experts, model=model_fingerprint(c),
                                      first_layer=first_moe)
        self._profile_defer: Callable[..., None] | None = None  # see routing_deferred
        self.gpu_tier = None
        if gpu_budget_bytes > 0:
            from kimi_local.cache.gpu_tier import GpuTier

            self.gpu_tier = GpuTier.for_budget(c, gpu_budget_bytes, device=gpu_device)
        if self.profile_path and self.profile_path.exists():
            self._load_profile()
        for layer_idx, expert_id in pinned:
            self._pin_forever(layer_idx, expert_id)

    # -- the lease protocol --------------------------------------------------------------------------------
    def acquire(self, layer_idx: int, expert_ids: Iterable[int],
                token_counts: Iterable[float] | None = None) -> list[ExpertWeights]:
        """Weights of `expert_ids` (distinct) for one layer step, each leased until `release`. `token_counts`:
        how many of the step's tokens chose each expert (default 1), what the policy weighs."""
        ids = [int(e) for e in expert_ids]
        weights = self.acquire_ready(layer_idx, ids, token_counts)
        if all(w is not None for w in weights):
            return weights  # type: ignore[return-value]
        try:
            return self.wait_leased(layer_idx, ids)
        except BaseException:
            self.release(layer_idx, ids)
            raise

    def acquire_ready(self, layer_idx: int, expert_ids: Iterable[int],
                      token_counts: Iterable[float] | None = None) -> list[ExpertWeights | None]:
        """`acquire` without waiting: every expert is leased (its read started if needed), and those still being
        read come back as None; `wait_leased` waits for them. A kernel can meanwhile compute the others."""
        ids = [int(e) for e in expert_ids]
        keys = [self._key(layer_idx, e) for e in ids]
        if len(set(keys)) != len(keys):
            raise StoreError(f"acquire: expert ids of layer {layer_idx} must be distinct, got {ids}")
        counts = [1.0] * len(keys) if token_counts is None else [float(n) for n in token_counts]
        entries: list[_Entry] = []
        with self._lock:
            try:
                for key, n in zip(keys, counts):
                    entries.append(self._lease_for_lookup(key, n))
            except BaseException:
                for key, entry in zip(keys, entries):
                    self._unlease(key, entry)
                raise
            self._account_prediction(layer_idx, keys)
            self._release_held(keep=layer_idx + 1)
        return [entry.weights for entry in entries]

    def wait_leased(self, layer_idx: int, expert_ids: Iterable[int]) -> list[ExpertWeights]:
        """Wait for the reads of leased experts; the wait counts as stall time. A failed read raises its
        `ExpertReadError` (the leases stay: release them)."""
        with self._lock:
            entries = []
            for e in expert_ids:
                entry = self._entries.get(self._key(layer_idx, int(e)))
                if entry is None or entry.leases == 0:
                    raise StoreError(f"wait_leased: layer {layer_idx} expert {e} is not leased")
                entries.append(entry)
        waiting = [entry for entry in entries if entry.weights is None]
        if waiting:
            start = time.perf_counter()
            try:
                for entry in waiting:
                    entry.future.result()
            finally:
                waited = time.perf_counter() - start
                with self._lock:
                    self.counters.waited_reads += len(waiting)
                    self.counters.stall_seconds += waited
                    if any(entry.demand for entry in waiting):
                        self.counters.stall_miss_seconds += waited
        return [entry.weights for entry in entries]  # type: ignore[misc]

    def release(self, layer_idx: int, expert_ids: Iterable[int]) -> None:
        with self._lock:
            for e in expert_ids:
                key = self._key(layer_idx, int(e))
                entry = self._entries.get(key)
                if entry is None or entry.leases == 0:
                    raise StoreError(f"release: layer {layer_idx} expert {e} is not leased")
                self._unlease(key, entry)

    @contextmanager
    def lease(self, layer_idx: int, expert_ids: Iterable[int],
              token_counts: Iterable[float] | None = None) -> Iterator[list[ExpertWeights]]:
        ids = [int(e) for e in expert_ids]
        weights = self.acquire(layer_idx, ids, token_counts)
        try:
            yield weights
        finally:
            self.release(layer_idx, ids)

    def get_expert(self, layer_idx: int, expert_id: int) -> ExpertWeights:
        """`ExpertSource`: leased until a lookup of another layer (see the module docstring)."""
        layer, held = self._implicit
        if layer != layer_idx:
            self.release_implicit()
            held = {}
            self._implicit = (layer_idx, held)
        if expert_id not in held:
            held[expert_id] = self.acquire(layer_idx, [expert_id])[0]
        return held[expert_id]

    def release_implicit(self) -> None:
        layer, held = self._implicit
        if held:
            self.release(layer, list(held))
        self._implicit = (-1, {})

    @property
    def max_lease(self) -> int:
        """Experts a layer step can lease now: slots not held by leases, prefetches or reads in flight."""
        with self._lock:
            return self.arena.num_slots - self._num_leased

    def drop_prefetch_holds(self) -> None:
        """Unpin what prefetches hold (the data stays cached) and wait for their reads, to free room."""
        with self._lock:
            self._release_held(keep=None)
        self.wait_idle()

    # -- prefetch --------------------------------------------------------------------------------------------
    def prefetch(self, layer_idx: int, expert_ids) -> None:
        """Start reading the experts predicted for `layer_idx`'s next step (best effort, never blocks on I/O).
        Experts in the GPU tier are computed there: they are neither read nor held."""
        ids = np.asarray(expert_ids.cpu() if hasattr(expert_ids, "cpu") else expert_ids)
        ids = ids.reshape(-1, ids.shape[-1]).T.reshape(-1) if ids.ndim > 1 else ids  # every token's best first
        ids = ids[np.sort(np.unique(ids, return_index=True)[1])]  # distinct, in the router's order
        keys = [self._key(layer_idx, int(e)) for e in ids]
        if self.gpu_tier is not None:
            ids = ids[~self.gpu_tier.contains(layer_idx, ids)]
        with self._lock:
            self._release_held(keep=None, only=layer_idx)
            self._predicted[layer_idx] = set(keys)
            started = self._prefetch_read.setdefault(layer_idx, set())
            held = self._held.setdefault(layer_idx, [])
            for rank, key in enumerate(self._key(layer_idx, int(e)) for e in ids):
                if self._num_leased >= self.arena.num_slots // 2:
                    break  # keep half the slots for the layer step that runs meanwhile
                entry = self._entries.get(key)
                if entry is None:
                    if self.arena.num_free == 0 and not self._evict_one(required=False):
                        break  # everything else is in use: skip the rest of the guess
                    try:
                        entry = self._start_read(key, prefetch=True, priority=(1, layer_idx, rank))
                    except Exception as exc:  # a hint must not fail the step; the demand read will report it
                        log.warning("prefetch of layer %d expert %d failed: %s", layer_idx,
                                    key % self.num_experts, exc)
                        break
                    started.add(key)
                    self.counters.prefetch_reads += 1
                self._lease(key, entry)
                held.append(key)

    # -- statistics, profile -------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Counters and tier occupancy as one flat dict (TUI, metrics, benchmarks); see `stats.py`."""
        with self._lock:
            resident = sum(1 for e in self._entries.values() if e.weights is not None)
            return {
                **self.counters.summary(self.payload_bytes),
                "ram_budget_bytes": self.ram_budget_bytes, "ram_slots": self.arena.num_slots,
                "ram_resident_experts": resident, "ram_resident_bytes": resident * self.payload_bytes,
                "ram_arena_bytes": self.arena.nbytes, "pinned_experts": len(self._pinned),
                "direct_io_shards": self.files.direct_count,
                **(self.gpu_tier.snapshot() if self.gpu_tier else {"gpu_resident_experts": 0, "gpu_bytes": 0}),
            }

    def record_routing(self, layer_idx: int, expert_ids: np.ndarray, token_counts: np.ndarray,
                       router_mass: np.ndarray, num_tokens: int) -> None:
        """A layer step over `num_tokens` tokens begins (the backend calls this before the step's lookups): tell
        the policy (its clock, and where a new prompt starts a new context), and feed the routing profile, now
        or, inside `routing_deferred`, once the pass succeeds."""
        with self._lock:
            self.policy.begin_step(layer_idx, num_tokens)
            defer = self._profile_defer
            if defer is None:
                self.profile.record(layer_idx, expert_ids, token_counts, router_mass, num_tokens)
        if defer is not None:
            defer(self._record_profile, layer_idx, expert_ids, token_counts, router_mass, num_tokens)

    @contextmanager
    def routing_deferred(self, defer: Callable[..., None]) -> Iterator[None]:
        """While open, the profile's updates are handed to `defer(update, *args)` instead of being applied: the
        engine holds a forward pass's updates and applies them (`update(*args)`) only if the pass succeeds, so a
        failed pass that is retried is counted once (`engine/pass_records.py`). The policy still hears of every
        step at once: the failed pass's lookups and reads did happen."""
        with self._lock:
            if self._profile_defer is not None:
                raise StoreError("routing_deferred: the profile's updates are already deferred")
            self._profile_defer = defer
        try:
            yield
        finally:
            with self._lock:
                self._profile_defer = None

    def _record_profile(self, layer_idx: int, expert_ids: np.ndarray, token_counts: np.ndarray,
                        router_mass: np.ndarray, num_tokens: int) -> None:
        with self._lock:
            self.profile.record(layer_idx, expert_ids, token_counts, router_mass, num_tokens)

    def save_profile(self) -> None:
        if self.profile_path is None:
            raise StoreError("save_profile: this store has no profile_path")
        with self._lock:
            self.profile.save(self.profile_path)

    def reset_profile(self) -> None:
        """Forget all routing history: the profile file, the profile and the policy's statistics."""
        with self._lock:
            self.profile.reset()
            self.policy.reset_statistics()
            if self.profile_path is not None:
                self.profile_path.unlink(missing_ok=True)

    def warm_start(self, max_experts: int | None = None) -> list[tuple[int, int]]:
        """Read the profile's most used experts ahead (as prefetches without a layer step); returns them."""
        n = self.arena.num_free if max_experts is None else max_experts
        top = self.profile.top_keys(n)
        with self._lock:
            for layer_idx, expert_id in top:
                key = self._key(layer_idx, expert_id)
                if key in self._entries:
                    continue
                if self.arena.num_free == 0:
                    break
                self._start_read(key, prefetch=True, priority=(2, layer_idx))
        return top

    def wait_idle(self) -> None:
        """Block until every read started so far has finished (tests, benchmarks)."""
        with self._lock:
            futures = [e.future for e in self._entries.values()]
        for f in futures:
            try:
                f.result()
            except (ExpertReadError, CancelledError):
                pass

    def close(self) -> None:
        self.release_implicit()
        self._reads.shutdown(wait=True)
        if self.profile_path is not None:
            try:
                self.save_profile()
            except OSError as exc:
                log.warning("could not save the routing profile to %s: %s", self.profile_path, exc)
        self.files.close()

    def __enter__(self) -> "ExpertStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals (called with the lock held) --------------------------------------------------------------
    def _key(self, layer_idx: int, expert_id: int) -> int:
        c = self.checkpoint.config
        if not (0 <= layer_idx < self.num_layers and c.is_moe_layer(layer_idx)):
            raise StoreError(f"layer {layer_idx} has no routed experts")
        if not 0 <= expert_id < self.num_experts:
            raise StoreError(f"expert {expert_id} out of range (layer {layer_idx} has {self.num_experts})")
        return layer_idx * self.num_experts + expert_id

    def _lease(self, key: int, entry: _Entry, pin: bool = True) -> None:
        if pin:
            self.policy.pin(key)
        entry.leases += 1
        self._num_leased += entry.leases == 1

    def _unlease(self, key: int, entry: _Entry) -> None:
        entry.leases -= 1
        self.policy.unpin(key)
        if entry.leases == 0:
            self._num_leased -= 1
            if entry.failed:
                self._drop(key, entry)

    def _drop(self, key: int, entry: _Entry) -> None:
        del self._entries[key]
        self.policy.remove(key)
        self.arena.free(entry.slot)

    def _lease_for_lookup(self, key: int, tokens: float) -> _Entry:
        c = self.counters
        c.lookups += 1
        self.policy.pin(key)  # before the lookup, so no eviction below can pick it
        try:
            self.policy.access(key, tokens)
            entry = self._entries.get(key)
            if entry is None:
                c.misses += 1
                entry = self._start_read(key, prefetch=False)
            elif entry.weights is None:
                c.inflight_waits += 1
                self._reads.promote(entry.future, self._demand_priority(started=True))  # needed now
            else:
                c.hits += 1
                c.prefetch_hits += entry.prefetched
            entry.prefetched = False
        except BaseException:
            self.policy.unpin(key)
            raise
        self._lease(key, entry, pin=False)  # the pin above is this lease's
        return entry

    def _evict_one(self, required: bool = True) -> bool:
        try:
            key = self.policy.victim()
        except PolicyError:
            if not required:
                return False
            raise StoreError(
                f"RAM expert cache is full: all {self.arena.num_slots} slots ({self.ram_budget_bytes} bytes) hold "
                f"experts in use; one layer step needs more experts than the budget holds"
            ) from None
        entry = self._entries[key]
        if entry.prefetched:
            self.counters.prefetch_unused += 1
        self._drop(key, entry)
        self.counters.evictions += 1
        return True

    def _demand_priority(self, started: bool = False) -> tuple:
        """Demand reads in the order asked, those a prefetch started (partly read) first; then prefetches
        (1, layer, rank in the prediction), then warm-start reads (2, layer)."""
        self._num_demand += 1
        return (0, 0 if started else 1, self._num_demand)

    def _start_read(self, key: int, prefetch: bool, priority: tuple | None = None) -> _Entry:
        """`priority` orders the read in the queue (`read_queue.py`); default: a demand read."""
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_expert(self.checkpoint, *divmod(key, self.num_experts))
            self.payload_bytes = plan.nbytes
        slot = self.arena.allocate()
        if slot is None:
            self._evict_one()
            slot = self.arena.allocate()
        self.policy.admit(key)
        entry = _Entry(slot=slot, plan=plan, future=Future(), prefetched=prefetch, demand=not prefetch)
        self._entries[key] = entry
        self._lease(key, entry)  # the read's own lease: the slot is being written
        entry.future = self._reads.submit(priority or self._demand_priority(), self._read(key, entry))
        return entry

    def _read(self, key: int, entry: _Entry) -> Iterator[None]:
        """On an I/O thread, one chunk per step (`read_queue.py`): fill the slot, then publish the views."""
        busy = 0.0  # seconds spent reading (not waiting in the queue after a preemption)
        steps = read_expert_steps(entry.plan, self.files, self.arena.slot_view(entry.slot))
        while True:
            start = time.perf_counter()
            try:
                next(steps)
            except StopIteration as stop:
                nbytes = stop.value
                busy += time.perf_counter() - start
                break
            except BaseException as exc:
                self._read_failed(key, entry, exc)
            busy += time.perf_counter() - start
            yield
        try:
            weights = ExpertWeights(*expert_views(entry.plan, self.arena.array, self.arena.base(entry.slot)))
        except BaseException as exc:
            self._read_failed(key, entry, exc)
        with self._lock:
            entry.weights = weights
            self.counters.bytes_read += nbytes
            self.counters.read_seconds += busy
            self._unlease(key, entry)

    def _read_failed(self, key: int, entry: _Entry, exc: BaseException) -> None:
        with self._lock:
            entry.failed = True
            self.counters.read_errors += 1
            self._unlease(key, entry)
        if not isinstance(exc, ExpertReadError):
            raise ExpertReadError(0, f"layer {entry.plan.layer_idx} expert {entry.plan.expert_id}: {exc}") from exc
        raise exc

    def _account_prediction(self, layer_idx: int, keys: list[int]) -> None:
        predicted = self._predicted.pop(layer_idx, None)
        if predicted is not None:
            self.counters.predicted += len(keys)
            self.counters.predicted_hits += len(predicted.intersection(keys))
        started = self._prefetch_read.pop(layer_idx, None)
        if started:
            for key in started.difference(keys):  # counted now; an eviction must not count them again
                entry = self._entries.get(key)
                if entry is None:
                    continue
                entry.prefetched = False
                if entry.weights is None and self._reads.cancel(entry.future):
                    # Not started: it costs nothing. The read's own lease goes now, the entry with the last lease.
                    self.counters.prefetch_cancelled += 1
                    entry.failed = True
                    self._unlease(key, entry)
                else:
                    self.counters.prefetch_unused += 1

    def _release_held(self, keep: int | None, only: int | None = None) -> None:
        """Drop prefetch holds: of layer `only`, or of every layer but `keep`."""
        for layer in list(self._held):
            if (only is not None and layer != only) or layer == keep:
                continue
            for key in self._held.pop(layer):
                self._unlease(key, self._entries[key])

    def _pin_forever(self, layer_idx: int, expert_id: int) -> None:
        key = self._key(layer_idx, expert_id)
        if len(self._pinned) + 1 >= self.arena.num_slots:
            raise StoreError(f"pinned experts need at least {len(self._pinned) + 2} slots (one for the rest); the "
                             f"budget holds {self.arena.num_slots}")
        self.acquire(layer_idx, [expert_id])  # the lease is never released
        self._pinned.append(key)

    def _load_profile(self) -> None:
        try:
            self.profile = RoutingProfile.load(self.profile_path, self.num_layers, self.num_experts,
                                               model=self.profile.model, first_layer=self.profile.first_layer)
        except ProfileError as exc:
            log.warning("ignoring the routing profile: %s", exc)
            return
        self.policy.seed(self.profile.usage.reshape(-1))  # the long-run usage: the prior before any context
