import numpy as np
import pytest

from kimi_local.cache.profile import ProfileError, RoutingProfile, default_profile_path, model_fingerprint
from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.cache.store import ExpertStore, StoreError
from kimi_local.model.checkpoint import Checkpoint


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    with Checkpoint.open(tiny_checkpoint) as c:
        yield c


def test_record_decays_by_tokens_and_ranks():
    p = RoutingProfile(3, 8, half_life_tokens=10, first_layer=1)
    p.record(1, np.array([2, 5]), np.array([3.0, 1.0]), np.array([1.5, 0.2]), num_tokens=2)
    p.record(1, np.array([5]), np.array([2.0]), np.array([0.3]), num_tokens=10)  # one half-life later
    assert p.usage[1, 2] == pytest.approx(1.5) and p.usage[1, 5] == pytest.approx(2.5)
    assert p.router_mass[1, 2] == pytest.approx(0.75)
    assert p.tokens == 12
    assert p.top_keys(5) == [(1, 5), (1, 2)]  # unused experts are never listed


def test_save_load_round_trip_and_refusals(tmp_path):
    p = RoutingProfile(2, 4, model="abc")
    p.usage[1, 3] = 7.0
    path = tmp_path / "sub" / "p.npz"
    p.save(path)
    assert [f.name for f in path.parent.iterdir()] == ["p.npz"]  # no temp file left behind
    q = RoutingProfile.load(path, 2, 4, model="abc")
    assert q.usage[1, 3] == 7.0 and q.model == "abc"
    with pytest.raises(ProfileError, match="another model"):
        RoutingProfile.load(path, 2, 4, model="xyz")
    with pytest.raises(ProfileError, match=r"'usage' is \[2, 4\]"):
        RoutingProfile.load(path, 3, 4)
    path.write_bytes(b"junk")
    with pytest.raises(ProfileError, match="unreadable"):
        RoutingProfile.load(path, 2, 4)


def test_default_path_is_per_model(ckpt, tmp_path):
    a = default_profile_path(tmp_path / "m", ckpt.config)
    assert a.suffix == ".npz" and model_fingerprint(ckpt.config) in a.name


def test_store_saves_profile_and_warm_starts(ckpt, tmp_path):
    path = tmp_path / "profile.npz"
    slot = expert_slot_bytes(ckpt)
    with ExpertStore(ckpt, 6 * slot, num_io_threads=2, profile_path=path) as store:
        for _ in range(5):
            store.record_routing(1, np.array([4, 9]), np.array([3.0, 2.0]), np.array([1.0, 0.5]), 2)
        store.record_routing(2, np.array([1]), np.array([1.0]), np.array([0.1]), 1)
    assert path.exists()  # saved on close
    with ExpertStore(ckpt, 6 * slot, num_io_threads=2, profile_path=path) as store:
        assert store.policy.model.longrun_count(1 * 16 + 4) > store.policy.model.longrun_count(1 * 16 + 9) > 0
        assert store.warm_start() == [(1, 4), (1, 9), (2, 1)]
        store.wait_idle()
        with store.lease(1, [4, 9]):
            pass
        snap = store.snapshot()
        assert snap["hits"] == 2 and snap["misses"] == 0 and snap["prefetch_hits"] == 2
        store.reset_profile()
        assert not path.exists() and store.policy.model.longrun_count(1 * 16 + 4) == 0
        assert store.profile.usage.sum() == 0


def test_store_defers_profile_updates_while_asked(ckpt):
    """Inside `routing_deferred` (an engine pass) the profile's updates wait for the pass to succeed; the
    policy's clock moves at once (the lookups and reads happen either way)."""
    with ExpertStore(ckpt, 2 * expert_slot_bytes(ckpt), num_io_threads=1) as store:
        held = []
        with store.routing_deferred(lambda update, *args: held.append((update, args))):
            store.record_routing(1, np.array([4, 9]), np.array([2.0, 1.0]), np.array([0.5, 0.25]), 2)
            with pytest.raises(StoreError, match="already deferred"):
                with store.routing_deferred(lambda update, *args: None):
                    pass
        assert store.profile.usage.sum() == 0 and store.profile.tokens == 0 and len(held) == 1
        assert store.policy.model.now == 2
        for update, args in held:  # the pass succeeded
            update(*args)
        assert store.profile.usage[1, [4, 9]].tolist() == [2.0, 1.0] and store.profile.tokens == 2
        assert store.profile.router_mass[1, 4] == 0.5
        store.record_routing(1, np.array([4]), np.array([1.0]), np.array([0.5]), 1)  # no longer deferred
        assert store.profile.tokens == 3


def test_store_ignores_a_profile_of_another_model(ckpt, tmp_path, caplog):
    path = tmp_path / "profile.npz"
    RoutingProfile(ckpt.config.num_hidden_layers, 16, model="other").save(path)
    with ExpertStore(ckpt, 2 * expert_slot_bytes(ckpt), profile_path=path) as store:
        assert store.profile.model == model_fingerprint(ckpt.config)
    assert "another model" in caplog.text
