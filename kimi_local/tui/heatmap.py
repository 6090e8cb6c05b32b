"""Fitting a layers x experts load matrix (Kimi-K2: 60 x 384) into a panel a few dozen cells wide.

Layers are grouped into at most `rows` bands and experts into at most `cols` bands of nearly equal size (the
first bands take one extra member when the sizes do not divide, like `np.array_split`); a cell shows the mean
load of its band. Each row is then scaled by its own maximum, so a cell's brightness says how hot that group
of experts is *within its layers*: a layer with a few hot experts shows a few bright cells whatever its
absolute load. `bin_load_reference` is the obvious double loop the fast version is tested against.
"""

from __future__ import annotations

import numpy as np

SHADES = " ░▒▓█"  # intensity 0 .. 1, in five steps


def band_starts(size: int, bands: int) -> np.ndarray:
    """Start index of each of min(bands, size) bands splitting range(size) like np.array_split."""
    bands = max(1, min(bands, size))
    base, extra = divmod(size, bands)
    lengths = np.full(bands, base)
    lengths[:extra] += 1
    return np.concatenate([[0], np.cumsum(lengths)[:-1]])


def bin_load(load: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Mean of `load` [L, E] over min(rows, L) x min(cols, E) bands."""
    load = np.asarray(load, dtype=np.float64)
    if load.ndim != 2 or 0 in load.shape:
        raise ValueError(f"load must be a non-empty [layers, experts] matrix, got shape {load.shape}")
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got {rows} and {cols}")
    r_starts = band_starts(load.shape[0], rows)
    c_starts = band_starts(load.shape[1], cols)
    sums = np.add.reduceat(np.add.reduceat(load, r_starts, axis=0), c_starts, axis=1)
    r_len = np.diff(np.append(r_starts, load.shape[0]))
    c_len = np.diff(np.append(c_starts, load.shape[1]))
    return sums / np.outer(r_len, c_len)


def bin_load_reference(load: np.ndarray, rows: int, cols: int) -> np.ndarray:
    layer_groups = np.array_split(np.arange(load.shape[0]), min(rows, load.shape[0]))
    expert_groups = np.array_split(np.arange(load.shape[1]), min(cols, load.shape[1]))
    out = np.zeros((len(layer_groups), len(expert_groups)))
    for i, lg in enumerate(layer_groups):
        for j, eg in enumerate(expert_groups):
            out[i, j] = float(np.mean([load[a, b] for a in lg for b in eg]))
    return out


def row_intensity(binned: np.ndarray) -> np.ndarray:
    """Each row divided by its maximum (rows of zeros stay zero): values in [0, 1]."""
    peak = binned.max(axis=1, keepdims=True)
    return np.divide(binned, peak, out=np.zeros_like(binned), where=peak > 0)


def shade(intensity: float) -> str:
    """The block character for an intensity in [0, 1]; any use at all is at least the lightest shade."""
    if intensity <= 0:
        return SHADES[0]
    return SHADES[max(1, min(len(SHADES) - 1, int(np.ceil(intensity * (len(SHADES) - 1)))))]


def band_labels(layer_ids: tuple[int, ...], rows: int) -> list[str]:
    """'L3' for a band of one layer, 'L3-7' for several."""
    starts = band_starts(len(layer_ids), rows)
    ends = np.append(starts[1:], len(layer_ids)) - 1
    return [f"L{layer_ids[s]}" if s == e else f"L{layer_ids[s]}-{layer_ids[e]}" for s, e in zip(starts, ends)]


def band_means(values: np.ndarray, rows: int) -> np.ndarray:
    """Mean of a per-layer vector over the same layer bands as `bin_load`."""
    values = np.asarray(values, dtype=np.float64)
    starts = band_starts(len(values), rows)
    lengths = np.diff(np.append(starts, len(values)))
    return np.add.reduceat(values, starts) / lengths
