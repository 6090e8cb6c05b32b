"""The fused routed-expert FFN against its float64 definition: decode and prefill paths, skewed routing,
experts without tokens, thread counts, and its input checks."""

from __future__ import annotations

from dataclasses import astuple

import numba
import numpy as np
import pytest

from kimi_local.kernels import cpu_workspace
from kimi_local.kernels.cpu_moe import (
    GEMV_MAX_TOKENS, Workspace, group_routing, moe_forward, moe_forward_reference,
)
from kimi_local.kernels.cpu_simd import LANES
from kimi_local.model.experts import ExpertWeights
from tests.kernels.cpu_cases import random_expert
from tests.kernels.test_cpu_gemv import assert_close


def routing(rng, num_tokens, k, expert_ids, skew=0.0):
    """Distinct top-k per token; with `skew` the first expert is in every token's top-k with that probability."""
    ids = np.empty((num_tokens, k), np.int64)
    for t in range(num_tokens):
        ids[t] = rng.choice(expert_ids, k, replace=False)
        if rng.random() < skew and expert_ids[0] not in ids[t]:
            ids[t, 0] = expert_ids[0]
    weights = rng.uniform(0.1, 1.0, (num_tokens, k)).astype(np.float32)
    return ids, weights


CASES = [  # tokens, top-k, experts, inter, hidden, skew
    (1, 2, 4, 64, 96, 0.0),  # decode, tiny
    (1, 8, 8, 130, 200, 0.0),  # decode, partial blocks in both dims
    (3, 2, 3, 96, 130, 0.0),  # few tokens: GEMV path with several tokens per expert
    (17, 3, 5, 100, 257, 0.0),  # odd count, mixed paths
    (40, 2, 6, 48, 300, 0.9),  # one expert takes nearly every token (tiled), others few (GEMV)
    (33, 1, 2, 200, 64, 0.0),  # k = 1
]


@pytest.mark.parametrize("num_tokens,k,num_experts,inter,hidden,skew", CASES)
def test_moe_matches_definition(num_tokens, k, num_experts, inter, hidden, skew):
    rng = np.random.default_rng(num_tokens * 31 + inter)
    expert_ids = rng.permutation(384)[:num_experts]
    experts = [random_expert(rng, inter, hidden, readonly=bool(i % 2)) for i in range(num_experts)]
    ids, weights = routing(rng, num_tokens, k, expert_ids, skew)
    x = rng.standard_normal((num_tokens, hidden)).astype(np.float32)
    got = moe_forward(x, ids, weights, expert_ids, experts)
    assert_close(got, moe_forward_reference(x, ids, weights, expert_ids, experts), hidden + inter)


def test_both_paths_run_and_unused_experts_are_skipped():
    rng = np.random.default_rng(5)
    expert_ids = np.array([7, 3, 11, 250])
    experts = [random_expert(rng, 72, 160) for _ in expert_ids]
    ids = np.array([[3, 7]] * (GEMV_MAX_TOKENS + 2) + [[7, 11]])  # 3: tiled, 11: one token, 250: none
    weights = rng.uniform(0.1, 1.0, ids.shape).astype(np.float32)
    x = rng.standard_normal((len(ids), 160)).astype(np.float32)
    r = group_routing(ids, weights, expert_ids)
    assert np.diff(r.starts).tolist() == [len(ids), GEMV_MAX_TOKENS + 2, 1, 0]
    panels = [-(-n // LANES) for n in (len(ids), GEMV_MAX_TOKENS + 2)]
    assert np.diff(r.panel_offsets).tolist() == panels + [0, 0] and np.diff(r.row_offsets).tolist() == [0, 0, 1, 0]
    got = moe_forward(x, ids, weights, expert_ids, experts)
    assert_close(got, moe_forward_reference(x, ids, weights, expert_ids, experts), 232)


@pytest.mark.parametrize("num_tokens", [1, 20])
def test_result_does_not_depend_on_the_thread_count(num_tokens):
    rng = np.random.default_rng(num_tokens)
    expert_ids = np.arange(4)
    experts = [random_expert(rng, 200, 256) for _ in expert_ids]
    ids, weights = routing(rng, num_tokens, 2, expert_ids, skew=0.5)
    x = rng.standard_normal((num_tokens, 256)).astype(np.float32)
    results, previous = [], numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            results.append(moe_forward(x, ids, weights, expert_ids, experts))
    finally:
        numba.set_num_threads(previous)
    assert np.array_equal(results[0], results[1])


def test_no_tokens_gives_an_empty_result():
    experts = [random_expert(np.random.default_rng(0), 32, 64)]
    out = moe_forward(np.zeros((0, 64), np.float32), np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float32),
                      [5], experts)
    assert out.shape == (0, 64)


def _inputs():
    rng = np.random.default_rng(9)
    experts = [random_expert(rng, 32, 64) for _ in range(2)]
    return (rng.standard_normal((2, 64)).astype(np.float32), np.array([[1], [4]]),
            np.ones((2, 1), np.float32), [1, 4], experts)


@pytest.mark.parametrize("mutate,message", [
    (lambda x, i, w, e, ex: (x, np.array([[1], [5]]), w, e, ex), "expert 5, which is not in expert_ids"),
    (lambda x, i, w, e, ex: (x, i, w, [1, 1], ex), "distinct"),
    (lambda x, i, w, e, ex: (x, i, w, [1], ex), "one ExpertWeights per expert id"),
    (lambda x, i, w, e, ex: (x, i[:1], w[:1], e, ex), r"\[T, k\]"),
    (lambda x, i, w, e, ex: (x[:, :10], i, w, e, ex), "K = 64"),
    (lambda x, i, w, e, ex: (x, i, w, e, [ex[0], random_expert(np.random.default_rng(0), 32, 65)]),
     "expert #1 gate_q has shape"),
])
def test_moe_rejects_bad_inputs_by_name(mutate, message):
    with pytest.raises((TypeError, ValueError), match=message):
        moe_forward(*mutate(*_inputs()))


def test_a_token_may_name_an_expert_twice():
    # The expert cache splits a step into groups by pointing a row's other slots at one of its members with
    # weight 0 (cache/backend.py): duplicates within a row must just add up.
    rng = np.random.default_rng(4)
    experts = [random_expert(rng, 40, 80) for _ in range(2)]
    ids = np.array([[3, 3], [3, 8], [8, 8]])
    weights = np.array([[0.5, 0.0], [0.25, 0.75], [0.3, 0.4]], np.float32)
    x = rng.standard_normal((3, 80)).astype(np.float32)
    got = moe_forward(x, ids, weights, [3, 8], experts)
    assert_close(got, moe_forward_reference(x, ids, weights, [3, 8], experts), 120)


def test_a_reused_workspace_gives_the_same_results():
    rng = np.random.default_rng(6)
    expert_ids = np.arange(3)
    experts = [random_expert(rng, 64, 96) for _ in expert_ids]
    ws = Workspace()
    for num_tokens in (30, 1, 7, 30):  # grows, shrinks, grows back: stale contents must not leak in
        ids, weights = routing(rng, num_tokens, 2, expert_ids, skew=0.8)
        x = rng.standard_normal((num_tokens, 96)).astype(np.float32)
        assert np.array_equal(moe_forward(x, ids, weights, expert_ids, experts, ws),
                              moe_forward(x, ids, weights, expert_ids, experts))


def test_a_workspace_checks_each_expert_object_once(monkeypatch):
    rng = np.random.default_rng(8)
    experts = [random_expert(rng, 32, 64) for _ in range(3)]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    ids, weights = np.array([[0, 2], [1, 2]]), np.ones((2, 2), np.float32)
    checked = []
    real = cpu_workspace.checked_expert
    monkeypatch.setattr(cpu_workspace, "checked_expert", lambda i, w: checked.append(w) or real(i, w))
    ws = Workspace()
    first = moe_forward(x, ids, weights, [0, 1, 2], experts, ws)
    assert moe_forward(x, ids, weights, [0, 1, 2], experts, ws).tobytes() == first.tobytes()
    assert len(checked) == 3  # the second call reused all three
    copies = [ExpertWeights(*(a.copy() for a in astuple(w))) for w in experts]  # new objects: checked anew
    assert np.array_equal(moe_forward(x, ids, weights, [0, 1, 2], copies, ws), first) and len(checked) == 6
    bad = ExpertWeights(*astuple(experts[0])[:5], experts[0].down_s.astype(np.float64))
    with pytest.raises(TypeError, match="expert #1 down"):
        moe_forward(x, ids, weights, [0, 1, 2], [experts[0], bad, experts[2]], ws)


def test_an_expert_with_copied_scales_is_read_anew_each_call():
    """Strided scales are copied for the kernel: such an expert is not remembered, so changes reach the kernel."""
    rng = np.random.default_rng(10)
    experts = [random_expert(rng, 32, 64) for _ in range(2)]
    strided = np.asfortranarray(experts[1].gate_s)
    experts[1] = ExpertWeights(experts[1].gate_q, strided, *astuple(experts[1])[2:])
    x, ids, weights = rng.standard_normal((1, 64)).astype(np.float32), np.array([[0, 1]]), np.ones((1, 2), np.float32)
    ws = Workspace()
    first = moe_forward(x, ids, weights, [0, 1], experts, ws)
    strided *= 2
    second = moe_forward(x, ids, weights, [0, 1], experts, ws)
    assert np.array_equal(second, moe_forward(x, ids, weights, [0, 1], experts)) and not np.array_equal(first, second)


def test_scratch_views_follow_growing_buffers():
    rng = np.random.default_rng(11)
    expert_ids = np.arange(3)
    experts = [random_expert(rng, 64, 96) for _ in expert_ids]
    ws = Workspace()
    for num_tokens in (1, 30, 1, 2, 30):  # each size after a larger one was seen, and growth after reuse
        ids, weights = routing(rng, num_tokens, 2, expert_ids, skew=0.8)
        x = rng.standard_normal((num_tokens, 96)).astype(np.float32)
        assert np.array_equal(moe_forward(x, ids, weights, expert_ids, experts, ws),
                              moe_forward(x, ids, weights, expert_ids, experts))
