"""Binning the layers x experts load into the panel, against the obvious loops; shades; the rendered map."""

from __future__ import annotations

import numpy as np
import pytest

from kimi_local.engine.routing_stats import RoutingSnapshot, entropy_bits
from kimi_local.tui.heatmap import (SHADES, band_labels, band_means, band_starts, bin_load, bin_load_reference,
                                    row_intensity, shade)
from kimi_local.tui.widgets.expert_heatmap import heatmap_text


@pytest.mark.parametrize("shape", [(1, 1), (2, 16), (5, 64), (60, 384), (7, 5), (3, 100)])
@pytest.mark.parametrize("bands", [(1, 1), (4, 20), (12, 22), (100, 500)])
def test_bin_load_matches_reference(shape, bands):
    load = np.random.default_rng(sum(shape)).random(shape)
    fast = bin_load(load, *bands)
    ref = bin_load_reference(load, *bands)
    assert fast.shape == ref.shape == (min(bands[0], shape[0]), min(bands[1], shape[1]))
    np.testing.assert_allclose(fast, ref, rtol=1e-12)


def test_bands_split_like_array_split():
    for size in (1, 5, 60, 384):
        for bands in (1, 3, 7, 22, 500):
            expected = [g[0] for g in np.array_split(np.arange(size), min(bands, size))]
            assert band_starts(size, bands).tolist() == expected


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="layers, experts"):
        bin_load(np.zeros(5), 2, 2)
    with pytest.raises(ValueError, match="rows and cols"):
        bin_load(np.zeros((2, 2)), 0, 2)


def test_row_intensity_and_shades():
    binned = np.array([[0.0, 1.0, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    assert row_intensity(binned).tolist() == [[0.0, 0.25, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]
    assert shade(0.0) == SHADES[0] and shade(1.0) == SHADES[-1]
    assert shade(1e-6) == SHADES[1]  # any use at all shows
    levels = [SHADES.index(shade(x)) for x in np.linspace(0, 1, 50)]
    assert levels == sorted(levels)


def test_band_labels_and_means():
    assert band_labels((1, 2, 3), 5) == ["L1", "L2", "L3"]
    assert band_labels(tuple(range(1, 61)), 12)[:2] == ["L1-5", "L6-10"]
    assert band_means(np.arange(6.0), 3).tolist() == [0.5, 2.5, 4.5]


def snapshot(load: np.ndarray, routed: int = 10) -> RoutingSnapshot:
    return RoutingSnapshot(tuple(range(1, load.shape[0] + 1)), load.shape[1], load, entropy_bits(load), routed, None)


def test_rendered_map_fits_and_shows_hot_experts():
    load = np.full((60, 384), 1e-4)
    load[:, 0] = 1.0  # expert 0 is the hot one in every layer
    load /= load.sum(axis=1, keepdims=True)
    text = heatmap_text(snapshot(load), width=34, height=13).plain
    lines = text.splitlines()
    assert len(lines) == 13  # 12 bands + the legend
    assert all(len(line) <= 34 for line in lines)
    assert lines[0].startswith("L1-5") and lines[0][7] == SHADES[-1] and lines[0][8] == SHADES[1]
    assert "384 experts/row" in lines[-1]


def test_map_without_statistics():
    assert "n/a" in heatmap_text(None, 30, 5).plain
    assert "waiting" in heatmap_text(snapshot(np.zeros((2, 4)), routed=0), 30, 5).plain


def test_layers_without_load_show_no_entropy():
    load = np.zeros((3, 8))
    load[0, :2] = 0.5  # only the first layer has routed anything yet
    lines = heatmap_text(snapshot(load), width=30, height=4).plain.splitlines()
    assert lines[0].endswith(" 33%")  # 1 bit of log2(8) = 3 bits
    assert lines[1].endswith("    -") and lines[2].endswith("    -")
    assert "H 33%" in lines[3]
