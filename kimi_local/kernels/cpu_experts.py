"""`NumbaExperts`: the routed-expert backend that computes on the CPU with the Numba block-fp8 kernels.

It implements the model's `RoutedExperts` seam: torch in, torch out (x's dtype and device), float32 compute.
Per MoE layer call it asks the expert source for the weights of every expert the batch routes to (zero-copy
views: mmap'd checkpoint pages or the expert cache's RAM buffers) and hands them all to `moe_forward`, which
runs the layer's experts together on `num_threads` threads.

The thread count is applied here and only here, on every call: Numba's thread count is per calling thread,
and the model calls the experts from its own worker thread.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import torch

from kimi_local.kernels.cpu_moe import Workspace, moe_forward
from kimi_local.model.experts import ExpertSource

log = logging.getLogger(__name__)


def usable_threads(requested: int) -> int:
    """`requested` clamped to what Numba's pool has (NUMBA_NUM_THREADS, by default the CPU count)."""
    if requested < 1:
        raise ValueError(f"num_threads must be >= 1, got {requested}")
    limit = numba.config.NUMBA_NUM_THREADS
    if requested > limit:
        log.warning("num_threads=%d exceeds Numba's pool of %d threads (NUMBA_NUM_THREADS); using %d",
                    requested, limit, limit)
    return min(requested, limit)


class NumbaExperts:
    """Routed experts on the CPU from an `ExpertSource` (the checkpoint or the expert cache)."""

    def __init__(self, source: ExpertSource, num_threads: int):
        self.source = source
        self.num_threads = usable_threads(num_threads)
        self.workspace = Workspace()  # the model calls from one worker thread at a time

    def prefetch(self, layer_idx: int, expert_ids: torch.Tensor) -> None:
        """Passed on to the source if it can read ahead (the expert cache can; a bare checkpoint cannot)."""
        prefetch = getattr(self.source, "prefetch", None)
        if prefetch is not None:
            prefetch(layer_idx, expert_ids)

    def __call__(self, layer_idx: int, x: torch.Tensor, topk_ids: torch.Tensor,
                 topk_weights: torch.Tensor) -> torch.Tensor:
        ids = topk_ids.detach().to("cpu", torch.int64).numpy()
        expert_ids = np.unique(ids)
        experts = [self.source.get_expert(layer_idx, int(e)) for e in expert_ids]
        xs = x.detach().to("cpu", torch.float32).contiguous().numpy()
        weights = topk_weights.detach().to("cpu", torch.float32).contiguous().numpy()
        numba.set_num_threads(self.num_threads)
        out = moe_forward(xs, ids, weights, expert_ids, experts, self.workspace)
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
