import pytest

from kimi_local.cache.bench_decode import bench_decode, bench_stream
from kimi_local.cache.reader import expert_slot_bytes
from kimi_local.model.checkpoint import Checkpoint


def test_bench_stream_reads_experts_and_compares(tiny_checkpoint):
    result = bench_stream(tiny_checkpoint, num_steps=2, num_io_threads=2, probe_seconds=0.05)
    assert result["experts_read"] == 8  # 2 steps of top-4, all misses
    assert result["bytes_read"] > 0 and result["sequential_gb_s"] > 0
    assert result["ratio"] == pytest.approx(result["expert_read_gb_s"] / result["sequential_gb_s"])


def test_bench_decode_on_a_budget_smaller_than_the_experts(tiny_checkpoint):
    with Checkpoint.open(tiny_checkpoint) as ckpt:
        budget_gb = 6 * expert_slot_bytes(ckpt) / (1 << 30)  # 6 of 32 experts
    result = bench_decode(tiny_checkpoint, budget_gb, num_tokens=4, num_threads=1, num_io_threads=2,
                          kernel="torch", probe_seconds=0.05)
    assert result["decoded_tokens"] == 4
    assert result["cache_fraction"] == pytest.approx(6 / 32)
    assert 0 <= result["hit_rate"] < 1 and result["disk_gb_per_token"] > 0
    assert result["floor_seconds_per_token"] > 0 and result["ratio_to_floor"] > 0
    # the needed reads add up, and their shares and the time budget follow from the same counts
    needed = result["misses_per_token"] + result["inflight_waits_per_token"] + result["prefetch_hits_per_token"]
    assert result["needed_reads_per_token"] == pytest.approx(needed) and needed > 0
    assert result["prefetch_started_share"] == pytest.approx(
        (result["inflight_waits_per_token"] + result["prefetch_hits_per_token"]) / needed)
    assert 0 <= result["stall_fraction"] <= result["not_ready_fraction"] <= 1
    assert 0 <= result["stall_time_share"] < 1 and result["stall_miss_seconds_per_token"] <= result[
        "stall_seconds_per_token"]
    assert result["bound"] == ("disk" if result["needed_disk_seconds_per_token"] >
                               result["compute_seconds_per_token"] else "compute")
