"""Expert-store faults under a running server (see `faults.py`): a transient EIO in a shared decode batch, an
unreadable expert that only one request needs, a shard truncated or deleted mid-decode. The request that meets
the fault fails with an error naming shard and tensor, the others complete, the cache stays consistent and the
server keeps serving."""

from __future__ import annotations

import pytest

from tests.reliability.faults import SCENARIOS


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fault_is_survived(tiny_checkpoint, tmp_path, name):
    result = SCENARIOS[name](tiny_checkpoint, tmp_path)
    assert result.survived, f"{result.name}: " + "; ".join(result.problems)
