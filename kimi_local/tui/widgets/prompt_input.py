"""The multi-line prompt box: Enter sends, Shift+Enter or Ctrl+J starts a new line, Up/Down recall history.

Many terminals send the same bytes for Enter and Shift+Enter, so Ctrl+J (a plain line feed, which every
terminal can send) is the newline key that always works. History works like a shell's: Up on the first line
of the box steps back through earlier prompts, Down on the last line steps forward and finally returns to the
draft being typed when history browsing began.

Textual dispatches a key to each class of the widget's MRO in turn until one prevents the default, so the keys
handled here never reach `TextArea`'s own handler, and every other key does.
"""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    class Submitted(Message):
        """The person pressed Enter on a prompt that is not blank."""

        def __init__(self, prompt_input: "PromptInput", text: str) -> None:
            super().__init__()
            self.prompt_input = prompt_input
            self.text = text

        @property
        def control(self) -> "PromptInput":
            return self.prompt_input

    def __init__(self, *, id: str | None = None, placeholder: str = "") -> None:
        super().__init__(id=id, soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                         placeholder=placeholder, compact=True)
        self.prompt_history: list[str] = []
        self._history_index: int | None = None  # None: editing the draft, else the entry shown
        self._draft = ""

    def add_history(self, text: str) -> None:
        if text and (not self.prompt_history or self.prompt_history[-1] != text):
            self.prompt_history.append(text)
        self._history_index = None

    def _recall(self, index: int | None) -> None:
        self._history_index = index
        self.text = self._draft if index is None else self.prompt_history[index]
        self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        handled = True
        if event.key == "enter":
            text = self.text
            if text.strip():
                self.add_history(text)
                self.post_message(self.Submitted(self, text))
        elif event.key in ("shift+enter", "ctrl+j"):
            self.insert("\n")
        elif event.key == "up" and self.cursor_location[0] == 0 and self.prompt_history and self._history_index != 0:
            if self._history_index is None:
                self._draft = self.text
                self._recall(len(self.prompt_history) - 1)
            else:
                self._recall(self._history_index - 1)
        elif event.key == "down" and self._history_index is not None \
                and self.cursor_location[0] == self.document.line_count - 1:
            nxt = self._history_index + 1
            self._recall(nxt if nxt < len(self.prompt_history) else None)
        else:
            handled = False
        if handled:
            event.stop()
            event.prevent_default()
