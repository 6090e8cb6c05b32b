"""Reopening a saved conversation: a list of the saved ones, newest first; Enter opens, Esc goes back.

Returns the chosen conversation id (or None). Files that cannot be read are left out of the list (the store
logs them), so one damaged file never hides the others.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from kimi_local.tui.store import ConversationStore, ConversationSummary


def summary_line(summary: ConversationSummary) -> Text:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.updated))
    line = Text(when, style="dim")
    line.append(f"  {summary.title}")
    line.append(f"  ({summary.num_messages} turns)", style="dim")
    return line


class ConversationsScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Back")]

    def __init__(self, store: ConversationStore) -> None:
        super().__init__(id="conversations")
        self.store = store
        self.summaries = store.list()

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations-box"):
            yield Label(Text(f"Saved conversations ({self.store.root})"), classes="title")
            if self.summaries:
                yield OptionList(*(Option(summary_line(s), id=s.id) for s in self.summaries), id="conversation-list")
            else:
                yield Label("No saved conversations yet.", id="conversation-list-empty")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
