"""The bandwidth probes: the Numba kernel against its numpy reference, and short real measurements."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from kimi_local import bandwidth


@pytest.mark.parametrize("n,chunks", [(1, 1), (7, 3), (1000, 64), (100_003, 7), (4096, 5000)])
def test_sum_words_matches_reference_including_wraparound(n, chunks):
    words = np.random.default_rng(n).integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    assert bandwidth.sum_words(words, chunks) == bandwidth.sum_words_reference(words)


def test_sum_words_rejects_other_arrays():
    with pytest.raises(ValueError, match="1-D uint64"):
        bandwidth.sum_words(np.zeros(4, dtype=np.float64))


def test_memory_probe_measures_something_plausible():
    result = bandwidth.measure_memory_bandwidth(seconds=0.05, nbytes=16 << 20, threads=1)
    assert result.bytes_moved == 16 << 20
    assert 1e8 < result.bytes_per_s < 1e13 and math.isfinite(result.seconds)
    assert "1 threads" in result.method


def test_disk_probe_reads_the_biggest_shard(tmp_path):
    (tmp_path / "model-1-of-2.safetensors").write_bytes(os.urandom(1 << 20))
    (tmp_path / "model-2-of-2.safetensors").write_bytes(os.urandom(3 << 20))
    assert bandwidth.biggest_file(tmp_path).name == "model-2-of-2.safetensors"
    result = bandwidth.measure_disk_bandwidth(tmp_path, seconds=5)
    assert result.bytes_moved == 3 << 20
    assert result.bytes_per_s > 0 and "model-2-of-2" in result.method


def test_disk_probe_without_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors file"):
        bandwidth.measure_disk_bandwidth(tmp_path)


@pytest.mark.gpu
def test_gpu_probe():
    result = bandwidth.measure_gpu_bandwidth("cuda", nbytes=64 << 20, repeats=2)
    assert result.bytes_moved == 2 * (64 << 20) and result.bytes_per_s > 1e10
