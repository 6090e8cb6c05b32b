"""write_atomic: the target holds the old bytes or the new ones, never a mix, and no temporary file stays."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from kimi_local.atomic_file import write_atomic, write_text_atomic


def test_creates_directories_and_replaces_the_file(tmp_path):
    path = tmp_path / "a" / "b" / "file.toml"
    write_text_atomic(path, "one\n")
    write_text_atomic(path, "two ü\n")
    assert path.read_text(encoding="utf-8") == "two ü\n"
    assert [p.name for p in path.parent.iterdir()] == ["file.toml"]


def test_file_data_and_directory_are_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    write_text_atomic(tmp_path / "x", "data")
    assert synced == [False, True]  # the file's bytes, then the directory entry


@pytest.mark.parametrize("failing", ["fill", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "profile.npz"
    write_atomic(path, lambda f: f.write(b"old"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fill(f):
        f.write(b"half of the new")
        if failing == "fill":
            disk_full()

    if failing != "fill":
        monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, fill)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["profile.npz"]


def test_a_new_file_is_private_and_a_replaced_one_keeps_its_mode(tmp_path):
    fresh = write_text_atomic(tmp_path / "new.toml", "api_key = 'secret'\n")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    shared = tmp_path / "shared.toml"
    shared.write_text("old")
    shared.chmod(0o644)
    write_text_atomic(shared, "new")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644 and shared.read_text() == "new"
