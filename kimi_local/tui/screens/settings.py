"""Editing the chat settings: system prompt, temperature, top-p, max tokens.

A modal that returns the new `ChatSettings` (or None when cancelled). Values are validated by `ChatSettings`
itself, so the error shown names the field and the accepted range, and nothing invalid reaches the engine.
The new settings apply from the next reply on.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from kimi_local.tui.chat_settings import ChatSettings

NUMBER_FIELDS = (("temperature", float), ("top_p", float), ("max_tokens", int))


class SettingsScreen(ModalScreen[ChatSettings | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save", priority=True),
    ]

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__(id="settings")
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(id="settings-box"):
            yield Label("Settings", classes="title")
            yield Label("System prompt")
            yield TextArea(self.settings.system_prompt, id="system_prompt", soft_wrap=True, compact=True)
            for name, _ in NUMBER_FIELDS:
                with Horizontal(classes="field"):
                    yield Label(name.replace("_", " "), classes="field-label")
                    yield Input(str(getattr(self.settings, name)), id=name, compact=True)
            yield Static("", id="settings-error")
            with Horizontal(classes="buttons"):
                yield Button("Save (Ctrl+S)", id="save", variant="primary", compact=True)
                yield Button("Cancel (Esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#system_prompt", TextArea).focus()

    def read_settings(self) -> ChatSettings:
        """The settings as entered; ValueError naming the field when one is not valid."""
        values: dict = {"system_prompt": self.query_one("#system_prompt", TextArea).text}
        for name, kind in NUMBER_FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            try:
                values[name] = kind(raw)
            except ValueError:
                raise ValueError(f"{name}: {raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        return ChatSettings(**values)

    def action_save(self) -> None:
        try:
            settings = self.read_settings()
        except ValueError as exc:
            self.query_one("#settings-error", Static).update(Text(str(exc), style="bold red"))
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()
