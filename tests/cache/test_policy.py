import numpy as np
import pytest

from kimi_local.cache.context_model import ContextParams
from kimi_local.cache.kimi_policy import ContextPolicy, KimiPolicy
from kimi_local.cache.policy import LFUPolicy, LRUPolicy, PolicyError, expert_key, split_key
from kimi_local.cache.simulate import access_stream, simulate, simulate_opt
from tests.cache import trace_cases
from tests.cache.trace_cases import CASES, E, K, L

POLICIES = {
    "lru": lambda: LRUPolicy(L, E),
    "lfu": lambda: LFUPolicy(L, E),
    "context": lambda: ContextPolicy(L, E, ContextParams(top_k=K)),
    "kimi": lambda: KimiPolicy(L, E, top_k=K, capacity=40),
}


def test_keys_round_trip():
    assert split_key(expert_key(3, 17, 384), 384) == (3, 17)


@pytest.mark.parametrize("name", POLICIES)
def test_protocol_errors_name_the_problem(name):
    p = POLICIES[name]()
    with pytest.raises(PolicyError, match="outside"):
        p.access(L * E)
    p.admit(5)
    with pytest.raises(PolicyError, match="already resident"):
        p.admit(5)
    with pytest.raises(PolicyError, match="not resident"):
        p.remove(6)
    with pytest.raises(PolicyError, match="not pinned"):
        p.unpin(5)
    p.pin(5)
    with pytest.raises(PolicyError, match="pinned"):
        p.remove(5)
    with pytest.raises(PolicyError, match="all 1 resident experts are pinned"):
        p.victim()


@pytest.mark.parametrize("name", POLICIES)
def test_random_driving_keeps_invariants(name):
    """Random accesses, admissions, pins and evictions against a plain-Python model of the cache."""
    rng = np.random.default_rng(0)
    p = POLICIES[name]()
    resident: set[int] = set()
    pins: dict[int, int] = {}
    for _ in range(4000):
        key = int(rng.integers(0, 80))
        op = rng.random()
        if op < 0.6:
            p.access(key, float(rng.integers(1, 4)))
            if key not in resident:
                if len(resident) >= 30:
                    old = p.victim()
                    assert old in resident and not pins.get(old), "victim must be resident and unpinned"
                    p.remove(old)
                    resident.discard(old)
                p.admit(key)
                resident.add(key)
        elif op < 0.8 and sum(1 for n in pins.values() if n) < 10:
            p.pin(key)
            pins[key] = pins.get(key, 0) + 1
        elif pins.get(key):
            p.unpin(key)
            pins[key] -= 1
        assert len(p) == len(resident)
    assert sorted(p.resident_keys()) == sorted(resident)
    evictable = {k for k in resident if not pins.get(k)}
    seen = set()
    while evictable - seen:  # the victims come out in some order, covering exactly the evictable residents
        v = p.victim()
        assert v in evictable
        seen.add(v)
        p.remove(v)
    with pytest.raises(PolicyError):  # only pinned keys (or none) are left
        p.victim()


def test_lru_evicts_least_recent():
    p = LRUPolicy(1, 8)
    for k in (0, 1, 2):
        p.access(k)
        p.admit(k)
    p.access(0)
    assert p.victim() == 1
    p.pin(1)
    assert p.victim() == 2
    p.unpin(1)  # back in the order, as most recent
    assert p.victim() == 2


def test_lfu_evicts_least_frequent_and_remembers_evicted_counts():
    p = LFUPolicy(1, 8)
    for k, n in ((0, 3), (1, 1), (2, 2)):
        for _ in range(n):
            p.access(k)
        p.admit(k)
    assert p.victim() == 1
    p.remove(0)
    p.access(0)
    p.admit(0)  # comes back with 4 accesses counted
    p.remove(p.victim())
    assert p.victim() == 2


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fraction", [0.2, 0.4])
def test_kimi_policy_never_worse_than_lru(case, fraction):
    trace = CASES[case](np.random.default_rng(1))
    stream = access_stream(trace)
    capacity = int(fraction * stream.num_keys)
    lru = simulate(stream, LRUPolicy(L, E), capacity).hit_rate
    kimi = simulate(stream, KimiPolicy(L, E, top_k=K, capacity=capacity), capacity).hit_rate
    opt = simulate_opt(stream, capacity).hit_rate
    assert kimi >= lru - 0.01, f"{case}: kimi {kimi:.3f} vs lru {lru:.3f}"
    assert opt >= kimi and opt >= lru
    if case in ("skewed", "scan"):  # where frequency matters, it must show
        assert kimi >= lru + 0.05, f"{case}: kimi {kimi:.3f} vs lru {lru:.3f}"


def test_kimi_policy_beats_lru_on_synthetic_traces():
    for seed in (0, 1):
        stream = access_stream(trace_cases.synthetic(seed))
        capacity = int(0.2 * stream.num_keys)
        lru = simulate(stream, LRUPolicy(L, E), capacity).hit_rate
        kimi = simulate(stream, KimiPolicy(L, E, top_k=K, capacity=capacity), capacity).hit_rate
        assert kimi > lru


def test_kimi_policy_switches_to_lru_on_recency_traces():
    stream = access_stream(CASES["shifting"](np.random.default_rng(2)))
    policy = KimiPolicy(L, E, top_k=K, capacity=50)
    simulate(stream, policy, 50)
    assert policy.use_lru
    stream = access_stream(CASES["skewed"](np.random.default_rng(2)))
    policy = KimiPolicy(L, E, top_k=K, capacity=50)
    simulate(stream, policy, 50)
    assert not policy.use_lru
