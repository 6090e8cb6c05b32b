"""Expert-store faults under a running server, as scenarios that report what happened.

The store reads experts with `os.preadv` on its I/O threads (`cache/reader.py`); faults are injected there,
below the reader, so the errors carry the reader's own messages (shard file and tensor):

- `ReadFaults.one_shot()`: the next expert read fails with EIO (a transient disk error);
- `ReadFaults.bad_expert(layer, e)`: every read of that expert fails with EIO (a bad sector under it);
- a shard truncated or deleted on disk while requests decode (a file system that goes away).

Each scenario runs real requests through a real server on a copy of the checkpoint with a RAM budget of a
few expert slots (so every step misses and reads), and checks the three promises: the request that meets the
fault fails with an error naming the shard and the tensor; the other requests complete; the store stays
consistent (no slot left leased, no failed entry kept, every cached expert byte-identical to the checkpoint).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from kimi_local.cache import reader as reader_module
from kimi_local.cache import store as store_module
from kimi_local.cache.reader import ShardFiles, plan_expert
from kimi_local.cache.store import ExpertStore
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.experts import ExpertWeights
from tests.reliability.servers import Sizes, held_engine, load_cached, load_plain, serve

SLOTS = 3  # 2 MoE layers x 16 experts, top-4: every step reads
SIZES = Sizes(max_context=128, max_batch=2, max_queue=8, prefill_chunk=64)


class ReadFaults:
    """Installs a gate in front of the store's reads; faults are armed per read (thread-local, so only the
    store's own reads can fail). Use as a context manager; restores everything on exit."""

    def __init__(self):
        self._gate = threading.local()
        self._lock = threading.Lock()
        self._one_shot = False
        self._bad: set[tuple[int, int]] = set()
        self.injected = 0
        self._real_read = store_module.read_expert_steps
        self._real_preadv = reader_module.os.preadv

    def one_shot(self) -> None:
        with self._lock:
            self._one_shot = True

    def bad_expert(self, layer_idx: int, expert_id: int) -> None:
        with self._lock:
            self._bad.add((layer_idx, expert_id))

    def _read(self, plan, files, slot):
        """The store's chunked read (a generator run one chunk per step on an I/O thread), gated per step."""
        with self._lock:
            fail = (plan.layer_idx, plan.expert_id) in self._bad or self._one_shot
            self._one_shot = False
            self.injected += fail
        steps = self._real_read(plan, files, slot)
        while True:
            self._gate.fail = fail
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value
            finally:
                self._gate.fail = False
            yield

    def _preadv(self, fd, buffers, offset):
        if getattr(self._gate, "fail", False):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self._real_preadv(fd, buffers, offset)

    def __enter__(self) -> "ReadFaults":
        store_module.read_expert_steps = self._read
        reader_module.os.preadv = self._preadv
        return self

    def __exit__(self, *exc) -> None:
        store_module.read_expert_steps = self._real_read
        reader_module.os.preadv = self._real_preadv


def store_problems(store: ExpertStore, ckpt: Checkpoint, timeout: float = 10.0) -> list[str]:
    """What is inconsistent in an idle store: leases left, slots unaccounted for, failed or wrong entries."""
    deadline = time.monotonic() + timeout
    while store.max_lease != store.arena.num_slots and time.monotonic() < deadline:
        time.sleep(0.01)  # a prefetch hold or a read may still be finishing
    store.wait_idle()
    problems = []
    if store.max_lease != store.arena.num_slots:
        problems.append(f"{store.arena.num_slots - store.max_lease} slots still leased")
    snap = store.snapshot()
    if snap["ram_resident_experts"] + store.arena.num_free != store.arena.num_slots:
        problems.append(f"{snap['ram_resident_experts']} resident + {store.arena.num_free} free != "
                        f"{store.arena.num_slots} slots")
    c = ckpt.config
    for layer in c.moe_layer_ids:
        for e in range(c.n_routed_experts):
            if not store.policy.is_resident(layer * c.n_routed_experts + e):
                continue
            with store.lease(layer, [e]) as (weights,):
                if not _same(weights, ckpt.expert(layer, e)):
                    problems.append(f"cached layer {layer} expert {e} differs from the checkpoint")
    return problems


def _same(a: ExpertWeights, b: ExpertWeights) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.__dict__.values(), b.__dict__.values()))


@dataclass
class FaultResult:
    name: str
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def private_copy(model_dir: Path, workdir: Path) -> Path:
    """A copy of the checkpoint the scenario may damage."""
    path = Path(workdir) / f"ckpt-{time.monotonic_ns()}"
    shutil.copytree(model_dir, path)
    return path


def completion(i: int, tokens: int, prompt: list[int] | None = None) -> dict:
    return {"prompt": prompt or [5 + i, 77, 300 + i], "max_tokens": tokens, "temperature": 0, "ignore_eos": True}


class Requests:
    """Completions sent on threads; results by name: (status, body)."""

    def __init__(self, url: str):
        self.url = url
        self.results: dict[str, tuple[int, dict]] = {}
        self.first_token: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, body: dict) -> None:
        self.first_token[name] = threading.Event()
        thread = threading.Thread(target=self._run, args=(name, body), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run(self, name: str, body: dict) -> None:
        """Streams, so the scenario knows when the request is decoding; collects the text and the error."""
        text, error, finish = "", None, None
        with httpx.Client(base_url=self.url, timeout=120) as http:
            with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                if r.status_code != 200:
                    self.results[name] = (r.status_code, {"error": r.read().decode()})
                    self.first_token[name].set()
                    return
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    frame = json.loads(line[6:])
                    if "error" in frame:
                        error = frame["error"]["message"]
                        continue
                    for choice in frame["choices"]:
                        text += choice["text"]
                        finish = choice["finish_reason"] or finish
                    self.first_token[name].set()
        self.first_token[name].set()
        self.results[name] = (200, {"text": text, "error": error, "finish_reason": finish})

    def join(self, timeout: float = 120.0) -> None:
        for thread in self._threads:
            thread.join(timeout)


def _failed_clearly(result: tuple[int, dict], shard_names: set[str]) -> str | None:
    """None if `result` is an error naming one of the shards and an expert tensor, else why not."""
    status, body = result
    message = body.get("error") or ""
    if status == 200 and body.get("finish_reason") == "length" and not message:
        return "it completed"
    if not any(name in message for name in shard_names) or ".mlp.experts." not in message:
        return f"the error does not name the shard and the tensor: {message[:200]}"
    return None


@contextmanager
def _server(model_dir: Path, prefetch: bool = True) -> Iterator:
    with serve(load_cached(model_dir, SIZES, SLOTS, prefetch=prefetch), max_queue=SIZES.max_queue) as running:
        yield running


def _healthy(result: FaultResult, running, ckpt: Checkpoint) -> None:
    health = httpx.get(running.url + "/health", timeout=30)
    result.expect(health.status_code == 200, f"/health answered {health.status_code}")
    after = httpx.post(running.url + "/v1/completions", json=completion(9, 4), timeout=60)
    result.expect(after.status_code == 200, f"a request after the fault got {after.status_code}: {after.text[:200]}")
    result.problems += store_problems(running.store, ckpt)


def transient_read_error_mid_batch(model_dir: Path, workdir: Path, tokens: int = 24) -> FaultResult:
    """One EIO while two requests decode in one batch (prefetch off: every read is a step's own): the step
    fails, the engine retries each request alone, both complete with all their tokens."""
    result = FaultResult("transient EIO in a decode batch")
    with _server(model_dir, prefetch=False) as running, ReadFaults() as faults:
        requests = Requests(running.url)
        requests.start("a", completion(0, tokens))
        requests.start("b", completion(1, tokens))
        for event in requests.first_token.values():
            event.wait(60)
        faults.one_shot()
        requests.join()
        result.expect(faults.injected == 1, f"{faults.injected} faults injected, expected 1")
        for name, (status, body) in sorted(requests.results.items()):
            ok = status == 200 and not body["error"] and body["finish_reason"] == "length"
            result.expect(ok, f"request {name} did not complete: {status} {body}")
        result.expect(running.store.snapshot()["read_errors"] == 1, "the store did not count the read error")
        with Checkpoint.open(model_dir) as ckpt:
            _healthy(result, running, ckpt)
    return result


def find_victim_expert(model_dir: Path, bystander: dict, victim: dict) -> tuple[int, int] | None:
    """A (layer, expert) the victim request first uses in a decode step while the bystander is still decoding,
    and which the bystander and the victim's prefill never use (greedy routing, recorded alone)."""
    loaded = load_plain(model_dir, SIZES)
    calls: list[tuple[int, set[int]]] = []
    loaded.model.routing_hooks.append(lambda layer, ids, predicted: calls.append((layer, set(ids.reshape(-1).tolist()))))

    def route(body: dict) -> dict[int, list[set[int]]]:
        calls.clear()
        params = SamplingParams(temperature=0, max_new_tokens=body["max_tokens"])
        list(loaded.engine.generate(body["prompt"], params))
        steps: dict[int, list[set[int]]] = {}
        for layer, ids in calls:
            steps.setdefault(layer, []).append(ids)
        return steps

    try:
        near, far = route(bystander), route(victim)
    finally:
        loaded.close()
    for layer, steps in far.items():
        used_by_bystander = set().union(*near[layer])
        seen = set(steps[0])  # the prefill
        for step, ids in enumerate(steps[1:], start=1):
            for e in sorted(ids - seen - used_by_bystander):
                if step + 1 < len(near[layer]) - 1:  # the bystander still decodes after this step
                    return layer, e
            seen |= ids
    return None


def unreadable_expert_fails_only_its_request(model_dir: Path, workdir: Path) -> FaultResult:
    """A bad sector under one expert that only the victim request routes to, first in a decode step shared
    with a bystander: the victim fails naming shard and tensor, the bystander completes unchanged."""
    result = FaultResult("unreadable expert in a shared decode batch")
    bystander, victim = completion(0, 12, [5]), completion(1, 24, [100, 200, 300])
    target = find_victim_expert(model_dir, bystander, victim)
    if target is None:
        result.problems.append("no expert used by the victim alone in decode (routing of this checkpoint)")
        return result
    layer, expert = target
    with Checkpoint.open(model_dir) as ckpt:
        shards = {op.shard.name for op in plan_expert(ckpt, layer, expert).reads}
    result.details.append(f"layer {layer} expert {expert} unreadable ({', '.join(sorted(shards))})")
    with _server(model_dir) as running:
        expected = httpx.post(running.url + "/v1/completions", json=bystander, timeout=60).json()["choices"][0]["text"]
        with ReadFaults() as faults, held_engine(running.engine, lambda: running.engine.num_waiting >= 2):
            faults.bad_expert(layer, expert)
            requests = Requests(running.url)
            requests.start("bystander", bystander)
            requests.start("victim", victim)
            requests.join()
            why = _failed_clearly(requests.results["victim"], shards)
            result.expect(why is None, f"the victim: {why}")
            status, body = requests.results["bystander"]
            result.expect(status == 200 and not body["error"] and body["text"] == expected,
                          f"the bystander did not complete unchanged: {status} {body}")
            result.expect(faults.injected >= 1, "the fault was never hit")
        with Checkpoint.open(model_dir) as ckpt:  # the sector is readable again
            _healthy(result, running, ckpt)
    return result


def shard_damaged_mid_decode(model_dir: Path, workdir: Path, how: str = "truncate") -> FaultResult:
    """A shard truncated (or deleted, with descriptors to be opened anew) while two requests decode: each completes
    or fails naming the shard and a tensor, the server keeps serving from the intact shards, and once the file
    is back every request works again (no poisoned cache entry)."""
    result = FaultResult(f"shard {'truncated' if how == 'truncate' else 'deleted'} mid-decode")
    path = private_copy(model_dir, workdir)
    with Checkpoint.open(path) as ckpt:
        shard = ckpt.info(f"model.layers.{ckpt.config.moe_layer_ids[-1]}.mlp.experts.0.gate_proj.weight").shard
    original = shard.read_bytes()
    try:
        with _server(path) as running:
            requests = Requests(running.url)
            requests.start("a", completion(0, 64))
            requests.start("b", completion(1, 64))
            for event in requests.first_token.values():
                event.wait(60)
            if how == "truncate":
                with open(shard, "r+b") as f:
                    f.truncate(len(original) // 3)
            else:  # as after a remount: the file is gone and descriptors must be opened anew
                shard.unlink()
                running.store.files = ShardFiles(running.store.files.use_direct)
            requests.join()
            outcomes = []
            for name, res in sorted(requests.results.items()):
                why = _failed_clearly(res, {shard.name})
                outcomes.append(f"{name}: {'completed' if why == 'it completed' else 'failed clearly' if why is None else why}")
                result.expect(why in (None, "it completed"), f"request {name}: {why}")
            result.details += outcomes
            result.expect(httpx.get(running.url + "/health", timeout=30).status_code == 200, "/health failed")
            shard.write_bytes(original)  # the file system is back
            with Checkpoint.open(path) as ckpt:
                _healthy(result, running, ckpt)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return result


SCENARIOS = {
    "transient": transient_read_error_mid_batch,
    "bad_expert": unreadable_expert_fails_only_its_request,
    "truncated": lambda model_dir, workdir: shard_damaged_mid_decode(model_dir, workdir, "truncate"),
    "deleted": lambda model_dir, workdir: shard_damaged_mid_decode(model_dir, workdir, "delete"),
}
