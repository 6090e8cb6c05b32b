"""Whole-file writes that a crash cannot leave half done.

The bytes go to a temporary file in the target's directory (same file system, so the rename is atomic), are
flushed and fsynced, and the file is renamed over the target; the directory is fsynced too so that the rename
itself survives a power cut. A failure removes the temporary file and leaves the old target as it was.
A new file is private (0600: a config may hold an API key, conversations are personal); a replaced file keeps
its mode.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable


def write_atomic(path: str | Path, fill: Callable[[IO[bytes]], None]) -> Path:
    """Create or replace `path` with what `fill(binary file)` writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
        except FileNotFoundError:
            pass
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    data = text.encode("utf-8")
    return write_atomic(path, lambda f: f.write(data))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform or file system without directory handles: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
