"""Saves that are interrupted leave the previous version whole: a writer process killed with SIGKILL while it
saves the routing profile or a conversation in a loop (see `atomic.py`), and a save whose write or rename fails
(disk full) inside this process."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from kimi_local.cache.profile import RoutingProfile
from kimi_local.tui.store import ConversationStore
from tests.reliability.atomic import (
    CONVERSATION_ID, PROFILE_SHAPE, conversation_version, kill_while_writing, load_conversation_version,
    load_profile_version, profile_version,
)


@pytest.mark.parametrize("kind, kills", [("profile", 4), ("conversation", 2)])
def test_killed_writer_leaves_a_whole_file(tmp_path, kind, kills):
    report = kill_while_writing(kind, tmp_path, kills, seed=kills)
    assert report.survived, report.problems


def test_the_kill_harness_catches_an_in_place_writer(tmp_path):
    """Writing the file where it lies tears it when killed: the harness must see that."""
    report = kill_while_writing("in-place profile", tmp_path, 4, seed=3)
    assert not report.survived


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["write", "rename"])
def test_profile_save_that_fails_keeps_the_previous_version(tmp_path, monkeypatch, where):
    path = tmp_path / "profile.npz"
    profile_version(1).save(path)
    if where == "write":

        def half_then_full(f, **arrays):
            f.write(b"PK\x03\x04 half an archive")
            disk_full()

        monkeypatch.setattr(np, "savez", half_then_full)
    else:
        monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        profile_version(2).save(path)
    monkeypatch.undo()
    assert load_profile_version(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.npz"]  # no temporary file left behind
    assert RoutingProfile.load(path, *PROFILE_SHAPE, model="reliability").tokens == 1


@pytest.mark.parametrize("where", ["fsync", "rename"])
def test_conversation_save_that_fails_keeps_the_previous_version(tmp_path, monkeypatch, where):
    store = ConversationStore(tmp_path)
    store.save(conversation_version(1))
    monkeypatch.setattr(os, "fsync" if where == "fsync" else "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.save(conversation_version(2))
    monkeypatch.undo()
    assert load_conversation_version(tmp_path / f"{CONVERSATION_ID}.json") == 1
    assert [s.id for s in store.list()] == [CONVERSATION_ID]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CONVERSATION_ID}.json"]
