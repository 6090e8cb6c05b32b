"""A configuration that cannot fit the machine is refused when the model loads, with the numbers, instead of
the process being killed for memory later (the machine is stood in for by a small one)."""

from __future__ import annotations

import re

import pytest

from kimi_local.engine import loader
from kimi_local.sizing import GiB, HEADROOM_MIN_BYTES, Machine
from tests.reliability.servers import Sizes, config_for, load_plain


def small_machine(usable: int) -> Machine:
    total = HEADROOM_MIN_BYTES + usable
    return Machine(ram_total=total, ram_available=total, physical_cores=2, logical_cores=2)


def test_explicit_ram_budget_over_the_machine_is_refused_with_the_numbers(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(loader, "probe_machine", lambda *a, **k: small_machine(1 << 20))
    config = config_for(Sizes(), ram_bytes=int(0.5 * GiB))
    with pytest.raises(ValueError) as info:
        loader.load(tiny_checkpoint, config)
    message = str(info.value)
    assert str(tiny_checkpoint) in message and "RAM" in message and "usable" in message
    assert len(re.findall(r"\d+\.\d+ GiB", message)) >= 3, message  # needed, its parts, and what is usable


def test_a_budget_that_fits_loads(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(loader, "probe_machine", lambda *a, **k: small_machine(2 * GiB))
    loaded = load_plain(tiny_checkpoint, Sizes())
    try:
        assert loaded.experts.store.arena.num_slots >= 1
    finally:
        loaded.close()


def test_no_room_for_one_layers_experts_is_refused(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(loader, "probe_machine", lambda *a, **k: small_machine(0))
    with pytest.raises(ValueError, match="does not fit this machine"):
        loader.load(tiny_checkpoint, config_for(Sizes()))
