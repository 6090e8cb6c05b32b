"""What the MoE kernel (`cpu_moe`) keeps between calls: scratch buffers, and the checked weight addresses of the
experts it has seen.

A decode step calls the kernel once per MoE layer, and each call streams hundreds of MB of weights through the
CPU caches, which pushes the Python interpreter out of them: every interpreted operation of the next call's
wrapper then waits on memory. Checking an expert's six arrays (dtype, shape, layout, the scale grid) is a few
dozen such operations, times eight experts; measured, the wrapper's work took 1-1.5 ms of a 16 ms layer. So the
wrapper does as little as it can per call:

* the RAM expert cache hands out the same `ExpertWeights` object for as long as an expert stays cached, so an
  expert is checked once per object and its addresses remembered (an entry holds its object weakly and serves
  only that very object, alive). An expert whose scales had to be copied (strided or misaligned) is checked,
  and copied, anew on every call, so that the kernel always reads its current values;
* scratch buffers are views of buffers kept here, made once per batch shape.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np

from kimi_local.kernels.cpu_checks import check_fp8_arrays
from kimi_local.kernels.cpu_routing import Routing
from kimi_local.kernels.cpu_simd import LANES
from kimi_local.kernels.cpu_views import address_of
from kimi_local.model.experts import ExpertWeights

REMEMBERED_EXPERTS = 4096  # checked experts a Workspace remembers (beyond it, dead entries go, then all)
MATRICES = ("gate", "up", "down")


def checked_expert(i: int, w: ExpertWeights) -> tuple[tuple[int, int], tuple[int, ...], list]:
    """Expert #i's (I, H), the addresses of its codes and scales for gate, up and down (six ints) and the
    copies the check made (scales that were strided or misaligned: the kernel reads those, so they must live
    as long as the addresses are used); every array checked."""
    inter, hidden = w.gate_q.shape
    addresses: list[int] = []
    copies = []
    for name, codes, scales, shape in (("gate", w.gate_q, w.gate_s, (inter, hidden)),
                                       ("up", w.up_q, w.up_s, (inter, hidden)),
                                       ("down", w.down_q, w.down_s, (hidden, inter))):
        if codes.shape != shape:
            raise ValueError(f"expert #{i} {name}_q has shape {codes.shape}, expected {shape} (from its gate_q)")
        checked_codes, checked_scales = check_fp8_arrays(f"expert #{i} {name}", codes, scales)
        addresses += [address_of(checked_codes), address_of(checked_scales)]
        if checked_scales is not scales:
            copies.append(checked_scales)
    return (inter, hidden), tuple(addresses), copies


class Workspace:
    """One per calling thread (the kernel's scratch is not shared)."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}
        self._scratch: dict[tuple[int, int, int, int], tuple[np.ndarray, ...]] = {}
        self._experts: dict[int, tuple[weakref.ref, tuple[int, int], tuple[int, ...]]] = {}

    def get(self, name: str, shape: tuple[int, ...], zero: bool = False) -> np.ndarray:
        """A float32 view of `shape` on the buffer `name` (grown as needed; contents undefined unless `zero`)."""
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(max(size, 1), np.float32)
            self._scratch.clear()  # views of the old buffer
        view = buffer[:size].reshape(shape)
        if zero:
            view.fill(0.0)
        return view

    def scratch(self, routing: Routing, hidden: int, inter: int) -> tuple[np.ndarray, ...]:
        """x_panels (lanes past each expert's last token zero), h_panels, x_rows, gu_rows, y_rows for a call."""
        num_panels, num_rows = int(routing.panel_offsets[-1]), int(routing.row_offsets[-1])
        key = (num_panels, num_rows, hidden, inter)
        views = self._scratch.get(key)
        if views is None:
            views = (self.get("x_panels", (num_panels, hidden, LANES)),
                     self.get("h_panels", (num_panels, inter, LANES)), self.get("x_rows", (num_rows, hidden)),
                     self.get("gu_rows", (num_rows, 2, inter)), self.get("y_rows", (num_rows, hidden)))
            self._scratch[key] = views  # (dropped when a buffer grows: `get`)
        if num_panels:
            views[0].fill(0.0)
        return views

    def weight_table(self, experts: Sequence[ExpertWeights]) -> tuple[np.ndarray, list]:
        """int64 [E, 6]: the addresses of each expert's gate, up and down codes and scales (every expert checked,
        once per object, and of expert #0's shapes); plus the copies to keep alive while the kernel runs."""
        rows, alive = [], []
        first = None
        for i, w in enumerate(experts):
            entry = self._experts.get(id(w))
            if entry is None or entry[0]() is not w:
                shape, addresses, copies = checked_expert(i, w)
                entry = (weakref.ref(w), shape, addresses)
                if copies:
                    alive.append(copies)
                else:
                    self._remember(id(w), entry)
            shape = entry[1]
            if first is None:
                first = shape
            elif shape != first:
                raise ValueError(f"expert #{i} gate_q has shape {shape}, expected {first} (like expert #0)")
            rows.append(entry[2])
        return np.array(rows, np.int64), alive

    def _remember(self, key: int, entry: tuple) -> None:
        if len(self._experts) >= REMEMBERED_EXPERTS:
            self._experts = {k: v for k, v in self._experts.items() if v[0]() is not None}
            if len(self._experts) >= REMEMBERED_EXPERTS:
                self._experts.clear()
        self._experts[key] = entry
