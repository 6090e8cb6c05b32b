"""The side panel: speed of the current reply, expert cache, memory, and the expert heat map.

`show(telemetry, meter)` is called about twice a second with the backend's latest snapshot and the meter of
the current (or last) reply. The formatted values are kept in `values` (label -> text) so tests and the
snapshot read exactly what is displayed.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from kimi_local.tui.reply_meter import ReplyMeter
from kimi_local.tui.telemetry import Telemetry
from kimi_local.tui.units import NA, fmt_bytes, fmt_count_of, fmt_rate, fmt_seconds, fmt_share
from kimi_local.tui.widgets.expert_heatmap import ExpertHeatmap

SECTIONS = {
    "speed": ("prompt", "generate", "first token", "context", "requests"),
    "cache": ("hit rate", "RAM tier", "GPU tier", "prefetch recall"),
    "memory": ("process RSS", "free RAM", "GPU memory"),
}
TITLES = {"speed": "Speed", "cache": "Expert cache", "memory": "Memory"}


def telemetry_values(telemetry: Telemetry | None, meter: ReplyMeter | None) -> dict[str, str]:
    t = telemetry or Telemetry()
    values = {
        "prompt": fmt_rate(meter.prompt_tokens_per_second) if meter else NA,
        "generate": fmt_rate(meter.generation_tokens_per_second) if meter else NA,
        "first token": fmt_seconds(meter.time_to_first_token) if meter else NA,
        "context": fmt_count_of(meter.context_tokens if meter else None, t.max_context),
        "requests": NA if t.running_requests is None else f"{t.running_requests} run, {t.waiting_requests or 0} wait",
    }
    cache = t.cache
    values["hit rate"] = fmt_share(cache.hit_rate) if cache else NA
    values["RAM tier"] = fmt_bytes(cache.ram_bytes) if cache else NA
    values["GPU tier"] = fmt_bytes(cache.gpu_bytes) if cache else NA
    values["prefetch recall"] = fmt_share(t.routing.prefetch_recall) if t.routing else NA
    values["process RSS"] = fmt_bytes(t.process_rss_bytes)
    values["free RAM"] = fmt_bytes(t.free_ram_bytes)
    if t.gpu_used_bytes is not None:
        values["GPU memory"] = f"{fmt_bytes(t.gpu_used_bytes)} / {fmt_bytes(t.gpu_total_bytes)}"
    else:
        values["GPU memory"] = "no GPU" if not t.has_gpu and t.process_rss_bytes is not None else NA
    return values


def section_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table.grid(expand=True)
    table.add_column(ratio=1, no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_row(Text(title, style="bold"), "")
    for label, value in rows:
        table.add_row(Text(f" {label}", style="dim"), Text(value, style="dim" if value == NA else ""))
    return table


class TelemetryPanel(Vertical):
    DEFAULT_CSS = """
    TelemetryPanel > Static { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.values: dict[str, str] = telemetry_values(None, None)

    def compose(self) -> ComposeResult:
        for key in SECTIONS:
            yield Static(id=f"telemetry-{key}")
        yield Static(Text("Experts (layers x experts)", style="bold"), id="heatmap-title")
        yield ExpertHeatmap(id="heatmap")

    def on_mount(self) -> None:
        self._render_values()

    def show(self, telemetry: Telemetry | None, meter: ReplyMeter | None) -> None:
        self.values = telemetry_values(telemetry, meter)
        self._render_values()
        self.query_one(ExpertHeatmap).show(telemetry.routing if telemetry else None)

    def _render_values(self) -> None:
        for key, labels in SECTIONS.items():
            self.query_one(f"#telemetry-{key}", Static).update(
                section_table(TITLES[key], [(label, self.values[label]) for label in labels]))
