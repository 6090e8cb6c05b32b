import json

import pytest

from kimi_local.cache.bench_cache import POLICY_KEYS, format_cache_bench, run_cache_bench
from kimi_local.cache.traces import save_trace
from kimi_local.cli import main
from tests.cache import trace_cases


def test_bench_result_is_consistent():
    trace = trace_cases.synthetic(0)
    result = run_cache_bench(trace, 0.2, expert_bytes=1000)
    lru, opt = result["lru"], result["opt"]
    assert lru["gap_closed"] == 0.0 and opt["gap_closed"] == 1.0
    for name in POLICY_KEYS:
        r = result[name]
        assert 0.0 <= r["hit_rate"] <= opt["hit_rate"]
        assert r["gap_closed"] == pytest.approx((r["hit_rate"] - lru["hit_rate"]) / (opt["hit_rate"] - lru["hit_rate"]))
        misses = (1 - r["hit_rate"]) * result["setup"]["accesses"]
        assert r["gb_per_token"] == pytest.approx(misses * 1000 / trace.num_tokens / 1e9)
    assert "target (LRU + half the LRU-to-OPT gap)" in format_cache_bench(result)
    with pytest.raises(ValueError, match="cache-fraction"):
        run_cache_bench(trace, 1.5)


def test_bench_cache_command_json(tmp_path, capsys):
    path = tmp_path / "trace.npz"
    save_trace(path, trace_cases.synthetic(1))
    assert main(["bench", "cache", "--trace", str(path), "--cache-fraction", "0.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"lru", "lfu", "opt", "kimi_local"}
    for r in out.values():
        assert {"hit_rate", "gap_closed", "gb_per_token"} <= set(r)


def test_bench_cache_command_reports_a_bad_trace(tmp_path, capsys):
    assert main(["bench", "cache", "--trace", str(tmp_path / "nope.npz")]) == 1
    assert "nope.npz: no such trace file" in capsys.readouterr().err


def test_the_oracle_bound_sits_between_lru_and_opt():
    from kimi_local.cache.traces import TraceSpec, synthesize_trace_with_probs

    spec = TraceSpec(num_layers=4, num_experts=64, top_k=4, num_seqs=4, prefill_tokens=32, decode_tokens=128)
    trace, probs = synthesize_trace_with_probs(spec)
    result = run_cache_bench(trace, 0.2, oracle=(probs, spec))
    oracle = result["oracle_a0"]["hit_rate"]
    assert result["lru"]["hit_rate"] < oracle <= result["opt"]["hit_rate"]
    assert oracle >= result["kimi_local"]["hit_rate"] - 0.01  # knowing the probabilities beats estimating them
    assert "online policy can expect" in format_cache_bench(result)
    assert oracle - 0.01 <= result["oracle_a0_next"]["hit_rate"] <= result["opt"]["hit_rate"]


def test_the_next_step_oracle_never_evicts_the_next_steps_experts():
    from kimi_local.cache.oracle import SequenceOracle
    from kimi_local.cache.simulate import access_stream
    from kimi_local.cache.traces import TraceSpec, synthesize_trace_with_probs

    spec = TraceSpec(num_layers=3, num_experts=16, top_k=2, num_seqs=1, prefill_tokens=0, decode_tokens=20)
    trace, probs = synthesize_trace_with_probs(spec)
    stream = access_stream(trace)
    policy = SequenceOracle(stream, probs, spec, protect_next=True)
    starts = stream.group_starts
    capacity, resident = 6, set()
    for g in range(len(starts) - 1):
        group = stream.keys[starts[g] : starts[g + 1]].tolist()
        upcoming = set(stream.keys[starts[g + 1] : starts[g + 2]].tolist()) if g + 2 < len(starts) else set()
        for key in group:
            policy.pin(key)
            policy.access(key)
            if key not in resident:
                if len(resident) >= capacity:
                    old = policy.victim()
                    evictable = resident - set(group) - upcoming
                    assert old not in upcoming or not evictable
                    policy.remove(old)
                    resident.discard(old)
                policy.admit(key)
                resident.add(key)
        for key in group:
            policy.unpin(key)
