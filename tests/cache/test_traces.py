import dataclasses

import numpy as np
import pytest

from kimi_local.cache.traces import (
    DECODE, PADDING, PREFILL, TraceError, TraceSpec, load_trace, save_trace, synthesize_trace,
    trace_stats,
)

SMALL = TraceSpec(num_layers=3, num_experts=32, top_k=4, num_seqs=3, prefill_tokens=10, decode_tokens=20, seed=7)


def test_round_trip_with_pred(tmp_path):
    trace = synthesize_trace(SMALL)
    pred = np.where(trace.experts >= 0, (trace.experts + 1) % 32, -1).astype(np.int16)
    trace = dataclasses.replace(trace, pred=pred)
    path = tmp_path / "t.npz"
    save_trace(path, trace)
    back = load_trace(path)
    assert np.array_equal(back.experts, trace.experts)
    assert np.array_equal(back.phase, trace.phase)
    assert np.array_equal(back.pred, pred)
    assert back.num_experts == 32


def test_minimal_file_defaults(tmp_path):
    """Only `experts`: phase defaults to decode (padding where all -1), num_experts to max id + 1."""
    experts = np.array([[[[0, 2]], [[-1, -1]]]], dtype=np.int16)  # 1 seq, 2 tokens (second is padding)
    path = tmp_path / "min.npz"
    np.savez(path, experts=experts)
    trace = load_trace(path)
    assert trace.phase.tolist() == [[DECODE, PADDING]]
    assert trace.num_experts == 3 and trace.num_tokens == 1


def write(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


GOOD = np.array([[[[0, 1]], [[2, 3]]]], dtype=np.int16)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"experts": GOOD.astype(np.int32)}, "'experts' must be int16"),
        ({"experts": GOOD[0]}, "4-d array"),
        ({"experts": np.array([[[[1, 1]]]], dtype=np.int16)}, "repeats an expert"),
        ({"experts": GOOD, "num_experts": np.int32(3)}, r"ids must lie in \[0, 3\)"),
        ({"experts": np.array([[[[0, -1]]]], dtype=np.int16), "num_experts": np.int32(4)}, "partly -1"),
        ({"experts": GOOD, "phase": np.array([[0, 2]], dtype=np.uint8)}, "values other than 0, 1, 255"),
        ({"experts": GOOD, "phase": np.array([[0, 255]], dtype=np.uint8)}, "disagree"),
        ({"experts": GOOD, "phase": np.array([0, 1], dtype=np.uint8)}, "'phase' must be uint8"),
        ({"experts": GOOD, "pred": GOOD[:, :1]}, "'pred' must be int16"),
        ({"experts": GOOD, "pred": GOOD + 10}, "'pred' ids"),
        ({"phase": np.zeros((1, 2), np.uint8)}, "no 'experts' array"),
    ],
)
def test_validation_errors_name_the_field(tmp_path, arrays, message):
    with pytest.raises(TraceError, match=message):
        load_trace(write(tmp_path, **arrays))


def test_unreadable_files(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        load_trace(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(TraceError, match="junk.npz: not a readable"):
        load_trace(junk)


def test_generator_is_deterministic_and_well_formed():
    a, b = synthesize_trace(SMALL), synthesize_trace(SMALL)
    assert np.array_equal(a.experts, b.experts)
    assert not np.array_equal(a.experts, synthesize_trace(dataclasses.replace(SMALL, seed=8)).experts)
    assert a.experts.shape[2:] == (3, 4)
    for s in range(a.num_seqs):  # prefill first, then decode, then padding
        phases = a.phase[s].tolist()
        assert phases == sorted(phases, key=[PREFILL, DECODE, PADDING].index)
        assert phases.count(PREFILL) >= 5 and phases.count(DECODE) >= 10


def test_generator_skew_and_locality_follow_the_spec():
    base = dataclasses.replace(SMALL, num_seqs=4, decode_tokens=200, num_experts=64)
    flat = trace_stats(synthesize_trace(dataclasses.replace(base, global_skew=0.0, topic_share=0.0,
                                                            locality_boost=1.0)))
    skewed = trace_stats(synthesize_trace(dataclasses.replace(base, locality_boost=1.0)))
    local = trace_stats(synthesize_trace(base))
    assert flat["top20pct_share"] == pytest.approx(0.2, abs=0.03)  # uniform: the top fifth gets a fifth
    assert skewed["top20pct_share"] > flat["top20pct_share"] + 0.15
    assert flat["next_token_overlap"] == pytest.approx(4 / 64, abs=0.02)  # chance: k / E
    assert local["next_token_overlap"] > skewed["next_token_overlap"] + 0.1


def test_bad_spec_names_the_field():
    with pytest.raises(TraceError, match="top_k"):
        synthesize_trace(dataclasses.replace(SMALL, top_k=64))
    with pytest.raises(TraceError, match="topic_share"):
        synthesize_trace(dataclasses.replace(SMALL, topic_share=1.5))
