"""What the expert store counts, and the derived figures the TUI, the metrics and the benchmarks show.

- hit: the expert was ready in RAM when a layer step asked for it (`prefetch_hits`: because a prefetch read
  it ahead); miss: nobody had predicted it, its read starts when the step asks; inflight wait: a prefetch had
  started the read but it had not finished.
- The reads a layer step needs: misses, inflight waits and prefetch hits. Of these,
  not_ready_fraction: the share not in RAM when the step asked (misses and inflight waits);
  stall_fraction: the share the step had to wait for (`waited_reads`): still not done once the kernel had
  computed the experts that were ready (`backend.py`). 0 when every read is hidden.
  prefetch_started_share: the share a prefetch had started before the step asked (inflight waits and
  prefetch hits). It tells the two causes of stalls apart: reads nobody predicted (misses) and reads predicted
  but not done in time (the disk too slow for the time between the prediction and the step).
- stall_seconds: time layer steps waited for reads (`stall_miss_seconds`: in steps that waited for a miss).
- prefetch_recall: of the experts looked up in layer steps that had a prediction, the share predicted.
- prefetch_cancelled: predicted reads the step did not need, cancelled before they started (no bytes read).
- prefetch_extra_bytes: bytes read by prefetches their layer step did not use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StoreCounters:
    lookups: int = 0
    hits: int = 0
    prefetch_hits: int = 0
    misses: int = 0
    inflight_waits: int = 0
    waited_reads: int = 0
    evictions: int = 0
    read_errors: int = 0
    bytes_read: int = 0
    read_seconds: float = 0.0  # summed over I/O threads
    stall_seconds: float = 0.0  # time acquire() waited for reads
    stall_miss_seconds: float = 0.0  # ... in layer steps where some read had not been predicted
    prefetch_reads: int = 0
    prefetch_unused: int = 0
    prefetch_cancelled: int = 0
    predicted: int = 0
    predicted_hits: int = 0

    def summary(self, expert_bytes: int) -> dict:
        hidden = self.prefetch_hits
        exposed = self.misses + self.inflight_waits
        needed = exposed + hidden
        return {
            "lookups": self.lookups, "hits": self.hits, "misses": self.misses,
            "hit_rate": self.hits / max(self.lookups, 1),
            "prefetch_hits": self.prefetch_hits, "inflight_waits": self.inflight_waits,
            "prefetch_reads": self.prefetch_reads, "prefetch_unused": self.prefetch_unused,
            "prefetch_cancelled": self.prefetch_cancelled,
            "predicted": self.predicted, "predicted_hits": self.predicted_hits,
            "prefetch_recall": self.predicted_hits / self.predicted if self.predicted else None,
            "prefetch_extra_bytes": self.prefetch_unused * expert_bytes,
            "stall_seconds": self.stall_seconds, "stall_miss_seconds": self.stall_miss_seconds,
            "waited_reads": self.waited_reads,
            "not_ready_fraction": exposed / needed if needed else None,
            "stall_fraction": self.waited_reads / needed if needed else None,
            "prefetch_started_share": (self.inflight_waits + hidden) / needed if needed else None,
            "bytes_read": self.bytes_read, "read_seconds": self.read_seconds,
            "read_gb_s": self.bytes_read / self.read_seconds / 1e9 if self.read_seconds else None,
            "evictions": self.evictions, "read_errors": self.read_errors,
        }
