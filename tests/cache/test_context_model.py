import numpy as np
import pytest

from kimi_local.cache.context_model import ContextModel, ContextParams
from kimi_local.cache.kimi_policy import ContextPolicy

L, E, K = 2, 16, 2


def run_pass(model: ContextModel, routing: dict[int, int], tokens: int = 1) -> None:
    """One forward pass over both layers: `routing[expert] = tokens that chose it` (same in each layer)."""
    for layer in range(L):
        model.begin_step(layer, tokens)
        for expert, n in routing.items():
            model.observe(layer * E + expert, n)


def topic_context(model: ContextModel, experts: list[int], prompt_tokens: int = 32, decode_tokens: int = 20) -> None:
    """A prompt whose tokens spread over `experts`, then decode tokens cycling through them (k=2 each)."""
    per = prompt_tokens * K // len(experts)
    run_pass(model, {e: per for e in experts}, tokens=prompt_tokens)
    for t in range(decode_tokens):
        run_pass(model, {experts[(2 * t) % len(experts)]: 1, experts[(2 * t + 1) % len(experts)]: 1})


def test_a_new_context_starts_with_a_pass_larger_than_the_last():
    m = ContextModel(L, E, ContextParams(top_k=K))
    run_pass(m, {0: 3, 1: 2}, tokens=3)  # the first prompt
    assert m.num_contexts == 1
    run_pass(m, {0: 3, 1: 3}, tokens=3)  # the next chunk of the same prompt: not larger
    run_pass(m, {0: 1, 1: 1})  # decode
    run_pass(m, {0: 1, 2: 1})
    assert m.num_contexts == 1 and m.now == 8
    assert m.context_count(0) == pytest.approx(3 + 3 + 2, rel=1e-2)  # decayed by 8 of 1000 tokens' half-life
    run_pass(m, {5: 4, 6: 4}, tokens=4)  # a new prompt
    assert m.num_contexts == 2
    assert m.context_count(0) == 0 and m.context_count(5) == 4
    assert m.longrun_count(0) == pytest.approx(8, rel=1e-2)


def test_recurring_topic_is_recognised_from_the_first_layers():
    m = ContextModel(L, E, ContextParams(top_k=K, min_profile_tokens=4))
    topic_a, topic_b = [0, 1, 2, 3], [8, 9, 10, 11]
    topic_context(m, topic_a)
    topic_context(m, topic_b)
    assert m.num_profiles == 1  # the context in progress is stored when the next one starts
    topic_context(m, [12, 13])  # stores topic b
    assert m.num_profiles == 2
    # A prompt of topic a, seen so far in layer 0 only, then the next pass: layer 1's topic-a experts,
    # never seen in this context, must outrank layer 1's topic-b experts, which were the more recent.
    m.begin_step(0, 16)
    for e in topic_a[:2]:
        m.observe(e, 16)
    m.begin_step(1, 16)
    m.begin_step(0, 1)  # the prior is refreshed at the next pass
    a_value = m.value(1 * E + topic_a[3])
    b_value = m.value(1 * E + topic_b[3])
    assert a_value > 10 * b_value


def test_same_topic_again_merges_into_its_profile():
    m = ContextModel(L, E, ContextParams(top_k=K, min_profile_tokens=4))
    for experts in ([0, 1, 2, 3], [8, 9, 10, 11], [0, 1, 2, 3], [8, 9, 10, 11], [4, 5]):
        topic_context(m, experts)
    assert m.num_contexts == 5 and m.num_profiles == 2


def test_profiles_are_capped_least_recently_matched_first():
    m = ContextModel(L, E, ContextParams(top_k=K, min_profile_tokens=4, max_profiles=2))
    for experts in ([0, 1], [4, 5], [0, 1], [8, 9], [12, 13]):
        topic_context(m, experts)
    assert m.num_profiles == 2
    profile_rates = m._profile_rates.reshape(2, L, E)  # which topics survived: [0, 1] (matched again) and [8, 9]
    hot = {int(e) for e in profile_rates[:, 0].argmax(axis=1)}
    assert hot & {0, 1} and hot & {8, 9}


def test_recency_boost_lasts_recent_tokens():
    p = ContextParams(top_k=K, recent_tokens=2, recent_boost=4)
    m = ContextModel(L, E, p)
    run_pass(m, {3: 1, 4: 1})
    base = m.value(3) / 4
    run_pass(m, {4: 1, 5: 1})
    assert m.value(3) == pytest.approx(4 * base, rel=0.02)  # used 1 token ago
    run_pass(m, {4: 1, 5: 1})
    assert m.value(3) == pytest.approx(4 * base, rel=0.02)  # 2 tokens ago
    run_pass(m, {4: 1, 5: 1})
    assert m.value(3) == pytest.approx(base, rel=0.02)
    keys = np.array([3, 4, 5])
    np.testing.assert_allclose(m.values_at(keys), [m.value(k) for k in keys])


def test_prefill_recency_comes_from_the_share_of_tokens():
    m = ContextModel(L, E, ContextParams(top_k=K, recent_tokens=4))
    run_pass(m, {1: 64, 2: 1}, tokens=64)  # expert 1 chose by every prompt token, expert 2 by one
    m.begin_step(0, 1)
    r1 = m.value(1) / (m.context_count(1) + m._prior[1])
    r2 = m.value(2) / (m.context_count(2) + m._prior[2])
    assert r1 == pytest.approx(4.0) and r2 == pytest.approx(1.0)


def test_seed_and_reset():
    m = ContextModel(L, E, ContextParams(top_k=K, longrun_prior_tokens=10))
    counts = np.zeros(L * E)
    counts[[3, E + 7]] = [50.0, 40.0]
    m.seed(counts)
    assert m.longrun_count(3) == 50 and m.value(3) > m.value(4)
    m.reset()
    assert m.longrun_count(3) == 0 and m.value(3) == m.value(4)
    with pytest.raises(ValueError, match="counts must have 32"):
        m.seed(np.zeros(5))


@pytest.mark.parametrize("field,value", [("top_k", 0), ("recent_boost", 0.5), ("carry", 2.0),
                                         ("context_half_life", 0.0), ("prior_tokens", -1.0)])
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ContextModel(L, E, ContextParams(**{field: value}))


def test_context_policy_evicts_the_lowest_value_and_follows_recency_expiry():
    p = ContextPolicy(L, E, ContextParams(top_k=K, recent_tokens=1, recent_boost=100))
    p.begin_step(0, 1)
    for key, n in ((0, 1), (1, 1)):
        p.access(key, n)
        p.admit(key)
    for _ in range(3):  # key 0 used three more times, in later passes
        p.begin_step(0, 1)
        p.access(0)
    p.begin_step(0, 1)
    p.begin_step(0, 1)  # key 0 is no longer recent
    p.access(2)
    p.admit(2)  # key 2: once, just now: boosted 100x, above key 0's 4 uses
    assert p.victim() == 1
    p.remove(1)
    assert p.victim() == 0
    p.begin_step(0, 1)
    p.begin_step(0, 1)  # key 2's boost expired
    assert p.victim() == 2
    with pytest.raises(ValueError, match="sized"):
        ContextPolicy(L, E + 1, model=p.model)
