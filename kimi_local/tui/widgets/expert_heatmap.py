"""Per-layer expert usage as a heat map, with routing entropy per row.

One text row per band of MoE layers (all of them when they fit), one cell per band of experts, sized to the
widget at each render (see `heatmap.py` for the binning). A cell's shade and colour say how hot those experts
are within their layers right now (the routing statistics decay, so the map follows the conversation). The
right column is the band's routing entropy as a share of the maximum, log2(experts): 100% means tokens spread
evenly over all experts, low values mean a few experts take most tokens.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from kimi_local.engine.routing_stats import RoutingSnapshot
from kimi_local.tui.heatmap import band_labels, band_means, bin_load, row_intensity, shade

PALETTE = ("#3a3a4a", "#4b6aa8", "#2aa198", "#e9c46a", "#f4734a")  # intensity 0 .. 1
LABEL_WIDTH = 7
ENTROPY_WIDTH = 5


def _colour(intensity: float) -> str:
    return PALETTE[min(len(PALETTE) - 1, int(intensity * (len(PALETTE) - 1) + 0.5))]


def heatmap_text(snapshot: RoutingSnapshot | None, width: int, height: int) -> Text:
    """The map for `snapshot` in at most `width` x `height` cells (one line is the legend)."""
    if snapshot is None:
        return Text("n/a (no routing statistics)", style="dim")
    if snapshot.routed_tokens == 0 and not snapshot.load.any():
        return Text("waiting for the first token", style="dim")
    rows = max(1, height - 1)
    cols = max(1, width - LABEL_WIDTH - ENTROPY_WIDTH - 1)
    binned = row_intensity(bin_load(snapshot.load, rows, cols))
    labels = band_labels(snapshot.layer_ids, rows)
    entropy = band_means(snapshot.normalized_entropy, rows)
    has_load = band_means(snapshot.load.sum(axis=1) > 0, rows) > 0
    text = Text(no_wrap=True, overflow="crop")
    for label, cells, h, active in zip(labels, binned, entropy, has_load):
        text.append(f"{label:<{LABEL_WIDTH}}"[:LABEL_WIDTH], style="dim")
        for value in cells:
            text.append(shade(float(value)), style=_colour(float(value)))
        text.append(f" {100 * max(h, 0.0):>3.0f}%\n" if active else "    -\n")
    mean = snapshot.mean_normalized_entropy
    legend = f"{snapshot.num_experts} experts/row, H {100 * mean:.0f}%" if mean is not None else ""
    text.append(legend[:width], style="dim")
    return text


class ExpertHeatmap(Widget):
    DEFAULT_CSS = """
    ExpertHeatmap { height: 1fr; min-height: 3; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.snapshot: RoutingSnapshot | None = None

    def show(self, snapshot: RoutingSnapshot | None) -> None:
        self.snapshot = snapshot
        self.refresh()

    def render(self) -> Text:
        return heatmap_text(self.snapshot, self.content_region.width or 30, self.content_region.height or 8)
