"""Reading one expert's six tensors from the shards straight into a RAM slot.

An expert is read with a plan computed once from the checkpoint header: which byte ranges of which shard go to
which offsets of the slot, and where inside the slot each tensor's data then starts. O_DIRECT wants the file
offset, the length and the buffer address aligned to the device block size, so every read covers the aligned
superset of its tensors' bytes (start rounded down, end rounded up to `ALIGN`) and lands at an aligned slot
offset; the tensor views point `offset % ALIGN` bytes in. Tensors that sit next to each other in a shard
(Kimi's weight and its `weight_scale_inv`) are merged into one read when that does not grow the slot.

Each tensor gets `round_up(nbytes) + ALIGN` bytes of slot, which bounds every plan, so one slot size serves all
experts of a model (`slot_bytes`).

Files are opened with O_DIRECT where the file system allows it (tested with one aligned read); elsewhere
(tmpfs, some network file systems) reads are buffered and followed by `posix_fadvise(DONTNEED)` on the range,
so the page cache does not grow with what the store reads. `os.preadv` releases the GIL: several reads proceed
in parallel on the store's I/O threads.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Generator

import numpy as np

from kimi_local.model.checkpoint import NUMPY_DTYPES, Checkpoint, TensorInfo
from kimi_local.model.layout import DTYPE_SIZES, expert_tensor_names

ALIGN = 4096


class ExpertReadError(OSError):
    """An expert could not be read from its shard (missing file, short read, I/O error)."""

    def __str__(self) -> str:
        return str(self.strerror)


def round_up(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def tensor_budget(nbytes: int) -> int:
    """Slot bytes reserved for one tensor: room for its aligned superset at any file offset."""
    return round_up(nbytes) + ALIGN


@dataclass(frozen=True)
class ReadOp:
    shard: Path
    file_offset: int  # aligned
    length: int  # aligned; may run past the end of the file (the tail is then short, and that is fine)
    needed: int  # bytes from file_offset that must arrive (up to the last tensor's end)
    slot_offset: int  # aligned
    tensors: tuple[tuple[str, int, int], ...]  # (name, file offset, nbytes) of the tensors it covers

    def tensor_at(self, file_offset: int) -> str:
        """The tensor whose bytes include (or follow) `file_offset`."""
        for name, offset, nbytes in self.tensors:
            if file_offset < offset + nbytes:
                return name
        return self.tensors[-1][0]


@dataclass(frozen=True)
class TensorPlace:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    slot_offset: int  # where the tensor's first byte lands in the slot
    nbytes: int


@dataclass(frozen=True)
class ExpertPlan:
    layer_idx: int
    expert_id: int
    reads: tuple[ReadOp, ...]
    places: tuple[TensorPlace, ...]  # in ExpertWeights field order

    @property
    def nbytes(self) -> int:
        """Payload bytes (what the tensors hold)."""
        return sum(p.nbytes for p in self.places)

    @property
    def read_bytes(self) -> int:
        """Bytes the reads request, alignment included."""
        return sum(r.length for r in self.reads)


def expert_slot_bytes(ckpt: Checkpoint) -> int:
    """The slot size every routed expert of this checkpoint fits in (from the config's shapes)."""
    from kimi_local.model.layout import layer_tensors

    c = ckpt.config
    layer = c.moe_layer_ids[0]
    names = set(expert_tensor_names(layer, 0))
    specs = [s for s in layer_tensors(c, layer) if s.name in names]
    return sum(tensor_budget(s.nbytes) for s in specs)


def plan_expert(ckpt: Checkpoint, layer_idx: int, expert_id: int) -> ExpertPlan:
    ckpt.check_expert(layer_idx, expert_id)
    infos: list[TensorInfo] = [ckpt.info(n) for n in expert_tensor_names(layer_idx, expert_id)]
    by_shard: dict[Path, list[TensorInfo]] = {}
    for info in infos:
        by_shard.setdefault(info.shard, []).append(info)
    reads: list[ReadOp] = []
    data_offset: dict[str, int] = {}
    cursor = 0
    for shard, group in by_shard.items():
        group.sort(key=lambda i: i.offset)
        run: list[TensorInfo] = []

        def flush() -> None:
            nonlocal cursor
            start = run[0].offset // ALIGN * ALIGN
            end = max(i.offset + i.nbytes for i in run)
            covered = tuple((i.name, i.offset, i.nbytes) for i in run)
            reads.append(ReadOp(shard, start, round_up(end) - start, end - start, cursor, covered))
            for i in run:
                data_offset[i.name] = cursor + i.offset - start
            cursor += sum(tensor_budget(i.nbytes) for i in run)

        for info in group:
            if run:
                start = run[0].offset // ALIGN * ALIGN
                merged = round_up(max(info.offset + info.nbytes, *(i.offset + i.nbytes for i in run))) - start
                if merged <= sum(tensor_budget(i.nbytes) for i in (*run, info)):
                    run.append(info)
                    continue
                flush()
            run = [info]
        flush()
    places = tuple(
        TensorPlace(i.name, np.dtype(NUMPY_DTYPES[i.dtype]), i.shape, data_offset[i.name], i.nbytes) for i in infos
    )
    for i in infos:
        if i.nbytes % DTYPE_SIZES[i.dtype] or data_offset[i.name] % np.dtype(NUMPY_DTYPES[i.dtype]).itemsize:
            raise ExpertReadError(errno.EINVAL, f"{i.shard}: tensor '{i.name}' is not aligned to its dtype")
    return ExpertPlan(layer_idx, expert_id, tuple(reads), places)


class ShardFiles:
    """Open file descriptors of the shards, O_DIRECT where allowed; thread-safe; closed with `close`."""

    def __init__(self, use_direct: bool = True):
        self.use_direct = use_direct and hasattr(os, "O_DIRECT")
        self._lock = threading.Lock()
        self._fds: dict[Path, tuple[int, bool]] = {}
        self._probe = None  # one aligned page to test O_DIRECT with

    def get(self, path: Path) -> tuple[int, bool]:
        """(fd, is_direct) for `path`, opened on first use."""
        with self._lock:
            entry = self._fds.get(path)
            if entry is None:
                entry = self._fds[path] = self._open(path)
            return entry

    def _open(self, path: Path) -> tuple[int, bool]:
        if self.use_direct:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except FileNotFoundError:
                raise
            except OSError:
                fd = -1
            if fd >= 0:
                import mmap

                probe = mmap.mmap(-1, ALIGN)
                try:
                    os.preadv(fd, [probe], 0)  # EINVAL here means the file system refuses O_DIRECT
                    return fd, True
                except OSError:
                    os.close(fd)
                finally:
                    probe.close()
        return os.open(path, os.O_RDONLY), False

    @property
    def direct_count(self) -> int:
        with self._lock:
            return sum(direct for _, direct in self._fds.values())

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()


READ_CHUNK = 8 << 20  # bytes per read call: 4-16 MiB reach the disk's O_DIRECT rate; between chunks a read yields


def read_expert(plan: ExpertPlan, files: ShardFiles, slot: memoryview) -> int:
    """Execute `plan` into `slot` (a writable, page-aligned buffer); returns the bytes read."""
    steps = read_expert_steps(plan, files, slot)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def read_expert_steps(plan: ExpertPlan, files: ShardFiles, slot: memoryview,
                      chunk_bytes: int = READ_CHUNK) -> Generator[None, None, int]:
    """`read_expert` one chunk per step (so the caller may run something more urgent in between); the
    generator returns the bytes read."""
    if chunk_bytes < ALIGN or chunk_bytes % ALIGN:
        raise ValueError(f"chunk_bytes = {chunk_bytes} must be a positive multiple of {ALIGN}")
    total = 0
    for op in plan.reads:
        def where(at: int) -> str:
            return f"layer {plan.layer_idx} expert {plan.expert_id}: {op.shard}: tensor '{op.tensor_at(at)}'"

        try:
            fd, direct = files.get(op.shard)
        except FileNotFoundError:
            raise ExpertReadError(errno.ENOENT, f"{where(0)}: shard is missing") from None
        except OSError as exc:
            raise ExpertReadError(exc.errno, f"{where(0)}: cannot open shard ({exc.strerror})") from None
        done = 0
        while done < op.length:
            at = op.file_offset + done
            n = min(chunk_bytes, op.length - done)
            try:
                got = os.preadv(fd, [slot[op.slot_offset + done : op.slot_offset + done + n]], at)
            except OSError as exc:
                raise ExpertReadError(exc.errno, f"{where(at)}: read failed at byte {at} ({exc.strerror})") from None
            if got <= 0:
                break
            done += got
            if got == n and done < op.length:
                yield
        if done < op.needed:
            at = op.file_offset + done
            raise ExpertReadError(errno.EIO, f"{where(at)}: short read: the shard ends at byte {at}, the tensor "
                                             f"needs bytes up to {op.file_offset + op.needed} (truncated shard?)")
        if not direct and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, op.file_offset, op.length, os.POSIX_FADV_DONTNEED)
        total += done
        yield
    return total


def expert_views(plan: ExpertPlan, arena: np.ndarray, slot_base: int) -> list[np.ndarray]:
    """Read-only numpy views of the six tensors inside the slot starting at `slot_base` of `arena` (uint8)."""
    views = []
    for p in plan.places:
        start = slot_base + p.slot_offset
        v = arena[start : start + p.nbytes].view(p.dtype).reshape(p.shape)
        v.flags.writeable = False
        views.append(v)
    return views
