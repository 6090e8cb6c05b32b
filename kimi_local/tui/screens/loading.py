"""Shown while the model loads (or the server is contacted): what is happening, a progress bar, and any error.

The loading itself runs on a background thread owned by the app; this screen only displays the progress it
reports, so the terminal stays responsive (Ctrl+Q quits at any time). A failure is shown as a readable
message, never a traceback.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ProgressBar, Static


class LoadingScreen(Screen):
    def __init__(self, what: str) -> None:
        super().__init__(id="loading")
        self.sub_title = what
        self.what = what
        self.stage = ""
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Center():
            with Vertical(id="loading-box"):
                yield Label(Text(self.what), id="loading-what")
                yield Label("starting…", id="loading-stage")
                yield ProgressBar(id="loading-progress", show_eta=False)
                yield Static("", id="loading-error")
        yield Footer()

    def set_progress(self, stage: str, done: int, total: int) -> None:
        self.stage = stage
        self.query_one("#loading-stage", Label).update(Text(stage))
        bar = self.query_one(ProgressBar)
        bar.update(total=total or None, progress=done)

    def show_error(self, message: str) -> None:
        self.error = message
        self.query_one("#loading-stage", Label).update("failed")
        self.query_one(ProgressBar).display = False
        self.query_one("#loading-error", Static).update(Text(f"{message}\n\nPress Ctrl+Q to quit."))
        self.add_class("failed")
