"""Checks a checkpoint directory against its config and index, and reports every problem it finds.

The reader (`checkpoint.py`) stops at the first problem, which is right for running a model and wrong for a
1 TB download: the user wants the whole list at once. `verify_checkpoint` goes through everything and collects:

1. config.json: a model this engine can run (else nothing more can be compared);
2. the index: every tensor the config implies (`layout.checkpoint_tensors`) is listed, nothing unknown is;
3. each shard's header: parsable; every entry a known dtype whose byte range matches its shape and lies inside
   the file, no two ranges overlapping; in the shard the index names; dtype and shape as the layout says, scale
   grids `[ceil(N/128), ceil(K/128)]` of their weight;
4. the data: every byte of every shard read to the end (positional reads in 16 MiB chunks, so a read error or a
   short file is pinned to the tensor it hits). Float32 and bf16 tensors are checked for NaN/inf on the way,
   scales for being positive; with `check_values` fp8 codes too (0x7f/0xff are NaN in e4m3fn).

Problems carry the file and tensor name. Errors make the checkpoint unusable; warnings (extra tensors, trailing
bytes) do not.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import psutil

from kimi_local.model.checkpoint import INDEX_NAME, MAX_HEADER_BYTES, SINGLE_FILE_NAME
from kimi_local.model.config import ConfigError, ModelConfig
from kimi_local.model.fp8 import scale_grid_shape
from kimi_local.model.layout import DTYPE_SIZES, TensorSpec, checkpoint_tensors, is_ignored

READ_CHUNK_BYTES = 16 << 20
MAX_NAMES_LISTED = 3


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    file: str  # relative to the checkpoint directory
    tensor: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f": tensor '{self.tensor}'" if self.tensor else "")
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class VerifyReport:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    num_tensors: int = 0  # tensors whose header entry was checked
    num_shards: int = 0
    bytes_read: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, file: str, tensor: str | None, message: str) -> None:
        self.problems.append(Problem("error", file, tensor, message))

    def warning(self, file: str, tensor: str | None, message: str) -> None:
        self.problems.append(Problem("warning", file, tensor, message))


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:MAX_NAMES_LISTED])
    return shown + (f" and {len(names) - MAX_NAMES_LISTED} more" if len(names) > MAX_NAMES_LISTED else "")


def read_weight_map(path: Path, report: VerifyReport) -> dict[str, str] | None:
    """The index's weight_map, or the single file's tensor names; None (and a problem) when unusable."""
    index_path = path / INDEX_NAME
    if not index_path.exists():
        single = path / SINGLE_FILE_NAME
        if single.exists():
            scratch = VerifyReport(path)  # entry problems are reported once, with the shard
            entries = _parse_header(single, scratch)
            if entries is None:
                report.problems += scratch.problems
                return None
            return {e.name: SINGLE_FILE_NAME for e in entries}
        report.error(INDEX_NAME, None, f"missing (and no {SINGLE_FILE_NAME})")
        return None
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        report.error(INDEX_NAME, None, f"unreadable index ({exc!r})")
        return None
    if not isinstance(weight_map, dict):
        report.error(INDEX_NAME, None, "'weight_map' is not an object")
        return None
    clean = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard:
            report.error(INDEX_NAME, name, f"shard {shard!r} is not a plain file name")
        else:
            clean[name] = shard
    return clean


def _parse_header(shard: Path, report: VerifyReport) -> list[Entry] | None:
    """Header entries, each checked on its own; None when the header itself is unreadable."""
    file = shard.name
    size = shard.stat().st_size
    with open(shard, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            report.error(file, None, f"truncated: {size} bytes, no safetensors header")
            return None
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            report.error(file, None, f"corrupt header: length field {header_len} does not fit the {size}-byte file")
            return None
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.error(file, None, f"corrupt header: not valid JSON ({exc})")
        return None
    if not isinstance(header, dict):
        report.error(file, None, "corrupt header: not a JSON object")
        return None
    base = 8 + header_len
    entries = []
    for name, item in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = item["dtype"]
            shape = tuple(int(d) for d in item["shape"])
            start, end = (int(v) for v in item["data_offsets"])
        except (KeyError, TypeError, ValueError):
            report.error(file, name, "malformed header entry")
            continue
        if dtype not in DTYPE_SIZES:
            report.error(file, name, f"unsupported dtype {dtype!r}")
            continue
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        if start < 0 or end - start != expected:
            report.error(file, name, f"data offsets [{start}, {end}) do not hold {dtype} {list(shape)} "
                                     f"({expected} bytes)")
            continue
        if base + end > size:
            report.error(file, name, f"truncated shard: tensor ends at byte {base + end}, file has {size}")
        entries.append(Entry(name, dtype, shape, base + start, base + end))
    previous = None
    for entry in sorted(entries, key=lambda e: e.start):
        if previous is not None and entry.start < previous.end:
            report.error(file, entry.name, f"data overlaps tensor '{previous.name}'")
        if previous is None or entry.end > previous.end:
            previous = entry
    return entries


def _check_layout(entry: Entry, spec: TensorSpec | None, file: str, report: VerifyReport,
                  actual_shapes: dict[str, tuple[int, ...]]) -> None:
    if spec is None:
        return
    if entry.dtype != spec.dtype:
        report.error(file, entry.name, f"dtype {entry.dtype}, expected {spec.dtype}")
    if entry.shape == spec.shape or is_ignored(entry.name):
        return
    if entry.name.endswith(".weight_scale_inv"):
        weight = entry.name[: -len("_scale_inv")]
        weight_shape = actual_shapes.get(weight, ())
        if len(weight_shape) != 2:
            weight_shape = ()
        grid = list(scale_grid_shape(*weight_shape)) if weight_shape else list(spec.shape)
        report.error(file, entry.name, f"wrong scale grid {list(entry.shape)}: expected {list(spec.shape)} "
                                       f"(ceil of the weight {list(weight_shape) or '?'} / 128 = {grid})")
    else:
        report.error(file, entry.name, f"shape {list(entry.shape)}, expected {list(spec.shape)}")


def _check_values(entry: Entry, data: np.ndarray, file: str, report: VerifyReport, check_fp8: bool,
                  flagged: set[str]) -> None:
    if entry.name in flagged:
        return
    message = None
    if entry.dtype == "F32":
        values = data.view(np.float32)
        if not np.isfinite(values).all():
            message = "contains NaN or inf"
        elif entry.name.endswith("weight_scale_inv") and (values <= 0).any():
            message = "has scales <= 0"
    elif entry.dtype == "BF16":
        if (data.view(np.uint16) & 0x7F80 == 0x7F80).any():
            message = "contains NaN or inf"
    elif entry.dtype == "F8_E4M3" and check_fp8:
        if (data & 0x7F == 0x7F).any():
            message = "contains NaN codes (0x7f/0xff)"
    if message:
        flagged.add(entry.name)
        report.error(file, entry.name, message)


def _read_shard(shard: Path, entries: list[Entry], report: VerifyReport, progress: Callable[[int], None] | None,
                buffer: np.ndarray, check_fp8: bool, drop_cache: bool) -> None:
    """Reads every byte after the header, tensor by tensor in file order; the header bytes count as read."""
    file = shard.name
    size = shard.stat().st_size
    ordered = sorted(entries, key=lambda e: e.start)
    first = ordered[0].start if ordered else size
    done = min(first, size)
    report.bytes_read += done
    if progress:
        progress(done)
    flagged: set[str] = set()
    fd = os.open(shard, os.O_RDONLY)
    try:
        for entry in ordered:
            pos = max(entry.start, done)
            while pos < entry.end:
                want = min(READ_CHUNK_BYTES, entry.end - pos)
                try:
                    got = os.preadv(fd, [memoryview(buffer)[:want]], pos)
                except OSError as exc:
                    report.error(file, entry.name, f"read error at byte {pos}: {exc.strerror or exc}")
                    break
                if got <= 0:
                    break  # past the end of a truncated file, already reported with the header
                if got % DTYPE_SIZES[entry.dtype] == 0:
                    _check_values(entry, buffer[:got], file, report, check_fp8, flagged)
                pos += got
                report.bytes_read += got
                if progress:
                    progress(got)
            done = max(done, pos)
        if done < size:
            tail = size - done
            report.warning(file, None, f"{tail} trailing bytes after the last tensor")
            report.bytes_read += tail
            if progress:
                progress(tail)
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # a big check must not push out everything else
    finally:
        os.close(fd)


def shard_files(path: Path, weight_map: dict[str, str]) -> list[str]:
    return sorted(set(weight_map.values()), key=_natural_key)


def verify_checkpoint(path: str | Path, progress: Callable[[int], None] | None = None, read_data: bool = True,
                      check_values: bool = False, drop_cache: bool | None = None) -> VerifyReport:
    """Every problem of the checkpoint at `path`. `progress(n)` is called with bytes read (see `bytes_to_read`);
    `read_data=False` checks config, index and headers only; `check_values` also scans fp8 codes for NaN.
    `drop_cache`: release each shard's pages from the page cache once read; default: when the checkpoint is
    bigger than half the available RAM (reading it would evict everything else anyway)."""
    path = Path(path).expanduser()
    if drop_cache is None:
        drop_cache = bytes_to_read(path) > psutil.virtual_memory().available // 2
    report = VerifyReport(path)
    if not path.is_dir():
        report.error(str(path), None, "not a checkpoint directory")
        return report
    try:
        config = ModelConfig.from_file(path / "config.json")
    except ConfigError as exc:
        report.error("config.json", None, str(exc).removeprefix(f"{path / 'config.json'}: "))
        return report
    specs = {s.name: s for s in checkpoint_tensors(config)}
    weight_map = read_weight_map(path, report)
    if weight_map is None:
        return report
    missing = [name for name in specs if name not in weight_map]
    for name in missing:
        report.error(INDEX_NAME, name, "missing from the index")
    for name in weight_map:
        if name not in specs:
            report.warning(INDEX_NAME, name, f"not part of this model's layout ({config.num_hidden_layers} layers, "
                                             f"{config.n_routed_experts} experts): ignored")
    buffer = np.empty(READ_CHUNK_BYTES, dtype=np.uint8)
    for file in shard_files(path, weight_map):
        shard = path / file
        listed = [name for name, f in weight_map.items() if f == file]
        report.num_shards += 1
        if not shard.is_file():
            report.error(file, None, f"shard is missing ({len(listed)} tensors: {_names(listed)})")
            continue
        entries = _parse_header(shard, report)
        if entries is None:
            if progress:
                progress(shard.stat().st_size)
            continue
        in_header = {e.name: e for e in entries}
        actual_shapes = {e.name: e.shape for e in entries}
        for name in listed:
            if name not in in_header:
                report.error(file, name, "listed in the index but not in the shard")
        for entry in entries:
            report.num_tensors += 1
            owner = weight_map.get(entry.name)
            if owner is None:
                report.warning(file, entry.name, "in the shard but not in the index")
            elif owner != file:
                report.error(file, entry.name, f"the index places it in '{owner}'")
            _check_layout(entry, specs.get(entry.name), file, report, actual_shapes)
        if read_data:
            _read_shard(shard, entries, report, progress, buffer, check_values, drop_cache)
    return report


def bytes_to_read(path: str | Path) -> int:
    """Total size of the shard files `verify_checkpoint` reads (for a progress bar); 0 if unknown."""
    path = Path(path).expanduser()
    try:
        if (path / INDEX_NAME).exists():
            files = set(json.loads((path / INDEX_NAME).read_text())["weight_map"].values())
        else:
            files = {SINGLE_FILE_NAME}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
    return sum((path / f).stat().st_size for f in files if isinstance(f, str) and (path / f).is_file())
