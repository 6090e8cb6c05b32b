"""Read-bandwidth probes: how fast this machine streams bytes from RAM, from disk and (if any) on the GPU.

Decoding a MoE token is a streaming read of the active experts' weights, so the read bandwidth of whatever holds
them bounds the decode speed (`footprint.estimate_decode`). The probes are short and honest:

- memory: a Numba `prange` sum over a buffer several times larger than any CPU cache, allocated like the RAM
  expert cache (huge pages where allowed, `hugepages`) and written first (an untouched buffer maps the shared
  zero page and reads impossibly fast); best of the passes that fit in ~0.5 s. Its pure
  reference is `sum_words_reference` (numpy), and the two must agree to the bit.
- disk: sequential 16 MiB reads of the biggest checkpoint shard with O_DIRECT, so the page cache is bypassed;
  where O_DIRECT is refused (tmpfs, some overlay filesystems) the file's cached pages are dropped with
  posix_fadvise first and plain reads are used, and the result says which method ran.
- GPU: a device-to-device copy through torch (bytes read + written per second).
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from kimi_local.hugepages import anonymous_buffer

log = logging.getLogger(__name__)

MEMORY_PROBE_BYTES = 256 << 20
DISK_CHUNK_BYTES = 16 << 20
DISK_PROBE_BYTES = 1 << 30
DIRECT_ALIGN = 4096


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float
    bytes_moved: int  # in the pass (memory) or the whole probe (disk) the figure comes from
    seconds: float
    method: str

    @property
    def gb_per_s(self) -> float:
        return self.bytes_per_s / 1e9


@numba.njit(parallel=True, cache=True)
def _sum_words(words: np.ndarray, num_chunks: int) -> np.uint64:
    # prange over independent chunks, each with a private accumulator, then a serial reduction.
    n = words.shape[0]
    step = (n + num_chunks - 1) // num_chunks
    partial = np.zeros(num_chunks, dtype=np.uint64)
    for c in numba.prange(num_chunks):
        chunk = words[c * step : min(n, (c + 1) * step)]
        acc = np.uint64(0)
        for i in range(chunk.shape[0]):
            acc += chunk[i]
        partial[c] = acc
    total = np.uint64(0)
    for c in range(num_chunks):
        total += partial[c]
    return total


def sum_words(words: np.ndarray, num_chunks: int = 64) -> int:
    """Wrapping (mod 2^64) sum of a uint64 array, in parallel: the memory probe's kernel."""
    if words.dtype != np.uint64 or words.ndim != 1:
        raise ValueError(f"sum_words needs a 1-D uint64 array, got {words.dtype} {list(words.shape)}")
    return int(_sum_words(words, max(1, num_chunks)))


def sum_words_reference(words: np.ndarray) -> int:
    return int(words.sum(dtype=np.uint64))


def ones_buffer(nbytes: int) -> np.ndarray:
    """uint64 ones over `nbytes` of memory allocated as the RAM expert cache's is (`hugepages`), every page
    written (an untouched page maps the shared zero page and reads impossibly fast)."""
    _, raw = anonymous_buffer(max(8, nbytes // 8 * 8), populate=False)
    words = raw.view(np.uint64)  # (the view keeps the mapping alive)
    words.fill(1)
    return words


def measure_memory_bandwidth(seconds: float = 0.5, nbytes: int = MEMORY_PROBE_BYTES,
                             threads: int | None = None) -> Bandwidth:
    """Best streaming-read rate of `nbytes` from RAM over the passes that fit in about `seconds`."""
    words = ones_buffer(nbytes)
    previous = numba.get_num_threads()
    if threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        used_threads = numba.get_num_threads()
        sum_words(words[:1024])  # compile (or load from cache) outside the timing
        best, passes, start = float("inf"), 0, time.perf_counter()
        while passes < 2 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            total = sum_words(words)
            best = min(best, time.perf_counter() - t0)
            passes += 1
            if passes >= 50:
                break
    finally:
        numba.set_num_threads(previous)
    if total != words.size:  # every word is 1: a wrong sum means the kernel is broken, not slow
        raise RuntimeError(f"memory probe summed {total}, expected {words.size}")
    log.debug("memory probe: %d passes over %d MiB, best %.4f s", passes, words.nbytes >> 20, best)
    return Bandwidth(words.nbytes / best, words.nbytes, best, f"numba sum, {used_threads} threads")


def biggest_file(path: Path, pattern: str = "*.safetensors") -> Path:
    """`path` itself if a file, else its biggest file matching `pattern` (the disk probe's subject)."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(path.glob(pattern), key=lambda p: p.stat().st_size, reverse=True)
    if not candidates:
        raise FileNotFoundError(f"{path}: no {pattern} file to read for the disk probe")
    return candidates[0]


def _open_direct(path: Path) -> int | None:
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_RDONLY | flag)
    except OSError:
        return None


def measure_disk_bandwidth(path: Path, seconds: float = 2.0, max_bytes: int = DISK_PROBE_BYTES) -> Bandwidth:
    """Sequential cold-read rate of the biggest checkpoint file under `path` (or the file `path`)."""
    target = biggest_file(path)
    size = target.stat().st_size
    buffer = mmap.mmap(-1, DISK_CHUNK_BYTES)  # page-aligned, as O_DIRECT requires
    view = memoryview(buffer)
    fd = _open_direct(target)
    method = "O_DIRECT"
    limit = min(size, max_bytes) // DIRECT_ALIGN * DIRECT_ALIGN
    if fd is not None:
        try:
            os.preadv(fd, [view[:DIRECT_ALIGN]], 0)
        except OSError:
            os.close(fd)
            fd = None
    if fd is None or limit == 0:
        if fd is not None:
            os.close(fd)
        fd = os.open(target, os.O_RDONLY)
        method = "buffered after posix_fadvise(DONTNEED)"
        limit = min(size, max_bytes)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        done, start = 0, time.perf_counter()
        while done < limit:
            want = min(DISK_CHUNK_BYTES, limit - done)
            got = os.preadv(fd, [view[:want]], done)
            if got <= 0:
                break
            done += got
            if time.perf_counter() - start > seconds:
                break
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        view.release()
        buffer.close()
    if done == 0:
        raise OSError(f"{target}: nothing could be read for the disk probe")
    log.debug("disk probe: %d MiB of %s in %.3f s (%s)", done >> 20, target, elapsed, method)
    return Bandwidth(done / max(elapsed, 1e-9), done, elapsed, f"{method}, {target.name}")


def measure_gpu_bandwidth(device: str = "cuda", nbytes: int = 1 << 30, repeats: int = 5) -> Bandwidth:
    """Device-memory bandwidth from a large copy (bytes read + written per second)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    del src, dst
    torch.cuda.empty_cache()
    return Bandwidth(2 * nbytes / best, 2 * nbytes, best, f"torch copy on {device}")
