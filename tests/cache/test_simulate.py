import numpy as np
import pytest

from kimi_local.cache.kimi_policy import KimiPolicy
from kimi_local.cache.policy import LFUPolicy, LRUPolicy
from kimi_local.cache.simulate import access_stream, next_use, simulate, simulate_opt
from kimi_local.cache.traces import DECODE, PADDING, PREFILL, RoutingTrace
from tests.cache import trace_cases


def brute_belady(keys: list[int], capacity: int) -> int:
    cache: set[int] = set()
    hits = 0
    for i, key in enumerate(keys):
        if key in cache:
            hits += 1
            continue
        if len(cache) >= capacity:
            def distance(k):
                rest = keys[i + 1 :]
                return rest.index(k) if k in rest else len(keys)
            cache.remove(max(cache, key=distance))
        cache.add(key)
    return hits


def brute_lru(keys: list[int], capacity: int) -> int:
    order: list[int] = []
    hits = 0
    for key in keys:
        if key in order:
            hits += 1
            order.remove(key)
        elif len(order) >= capacity:
            order.pop(0)
        order.append(key)
    return hits


def decode_trace(rng, num_tokens=60, num_layers=3, num_experts=12, k=2):
    experts = np.stack([
        np.stack([rng.choice(num_experts, k, replace=False) for _ in range(num_layers)]) for _ in range(num_tokens)
    ]).astype(np.int16)[None]
    return RoutingTrace(experts=experts, phase=np.full((1, num_tokens), DECODE, np.uint8), num_experts=num_experts)


def test_next_use_matches_brute_force():
    keys = np.random.default_rng(0).integers(0, 7, size=200).astype(np.int32)
    nxt = next_use(keys, 7)
    for i in range(keys.size):
        later = np.flatnonzero(keys[i + 1 :] == keys[i])
        assert nxt[i] == (i + 1 + later[0] if later.size else keys.size)


@pytest.mark.parametrize("capacity", [1, 3, 8])
def test_opt_matches_brute_force_belady(capacity):
    stream = access_stream(decode_trace(np.random.default_rng(capacity)))
    assert simulate_opt(stream, capacity).hits == brute_belady(stream.keys.tolist(), capacity)


@pytest.mark.parametrize("capacity", [2, 5, 9])
def test_lru_simulation_matches_brute_force(capacity):
    # k=1: no group pinning effects, so the store protocol reduces to textbook LRU
    stream = access_stream(decode_trace(np.random.default_rng(capacity), k=1))
    result = simulate(stream, LRUPolicy(3, 12), capacity)
    assert result.hits == brute_lru(stream.keys.tolist(), capacity)


@pytest.mark.parametrize("seed", range(4))
def test_opt_bounds_every_policy(seed):
    stream = access_stream(trace_cases.synthetic(seed))
    for capacity in (10, 40, 100):
        opt = simulate_opt(stream, capacity).hits
        for policy in (LRUPolicy(4, 64), LFUPolicy(4, 64), KimiPolicy(4, 64, top_k=4, capacity=capacity)):
            assert simulate(stream, policy, capacity).hits <= opt


def test_access_order_decode_then_prefill_union():
    experts = np.full((1, 4, 2, 2), -1, dtype=np.int16)
    experts[0, 0] = [[0, 1], [2, 3]]  # prefill
    experts[0, 1] = [[1, 4], [3, 2]]  # prefill
    experts[0, 2] = [[5, 0], [1, 2]]  # decode
    phase = np.array([[PREFILL, PREFILL, DECODE, PADDING]], dtype=np.uint8)
    stream = access_stream(RoutingTrace(experts=experts, phase=phase, num_experts=6))
    e = 6
    assert stream.keys.tolist() == [0, 1, 4, e + 2, e + 3, 5, 0, e + 1, e + 2]
    assert stream.weights.tolist() == [1, 2, 1, 2, 2, 1, 1, 1, 1]  # tokens that chose each expert in the chunk
    assert stream.group_starts.tolist() == [0, 3, 5, 7, 9]
    assert stream.group_phase.tolist() == [PREFILL, PREFILL, DECODE, DECODE]
    assert (stream.num_tokens, stream.num_decode_tokens) == (3, 1)


def test_prefill_chunks_split_the_union():
    experts = np.array([[[[0]], [[0]], [[0]]]], dtype=np.int16)  # 3 prefill tokens, 1 layer, k=1
    stream = access_stream(RoutingTrace(experts=experts, phase=np.zeros((1, 3), np.uint8), num_experts=2),
                           prefill_chunk=2)
    assert stream.keys.tolist() == [0, 0]
    assert stream.weights.tolist() == [2, 1]


def test_capacity_never_exceeded_and_groups_bigger_than_the_cache_are_split():
    class Watch(LRUPolicy):
        most = 0

        def admit(self, key):
            super().admit(key)
            Watch.most = max(Watch.most, len(self))

    experts = np.arange(8, dtype=np.int16).reshape(1, 1, 1, 8)  # one decode token needing 8 experts at once
    trace = RoutingTrace(experts=experts, phase=np.ones((1, 1), np.uint8), num_experts=8)
    result = simulate(access_stream(trace), Watch(1, 8), capacity=3)
    assert result.accesses == 8 and result.hits == 0
    assert Watch.most == 3


def test_bad_capacity_is_refused():
    stream = access_stream(decode_trace(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="capacity"):
        simulate(stream, LRUPolicy(3, 12), 0)
    with pytest.raises(ValueError, match="capacity"):
        simulate_opt(stream, 0)
