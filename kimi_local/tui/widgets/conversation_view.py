"""The conversation: one `MessageView` per turn in a scrolling column that follows new text.

Assistant turns render Markdown; while a reply streams, text goes through `Markdown.get_stream()`, which
batches fragments when they arrive faster than the widget can re-render. The view is anchored to the bottom,
so it follows the stream unless the person scrolls up; it is anchored only once the turns overflow it, so a
short conversation starts at the top.
"""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Markdown
from textual.widgets.markdown import MarkdownStream

ROLE_TITLES = {"user": "You", "assistant": "Kimi"}


class MessageView(Vertical):
    """One turn: a role line, the Markdown body, and a note when the turn ended unusually."""

    DEFAULT_CSS = """
    MessageView { height: auto; }
    MessageView > Markdown { margin: 0; padding: 0 1; }
    """

    def __init__(self, role: str, text: str = "", note: str = "") -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.text = text
        self._note = note
        self._streaming = False
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Label(Text(ROLE_TITLES.get(self.role, self.role)), classes="role")
        yield Markdown(self.text)
        yield Label(Text(self._note), classes="note")

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def set_note(self, note: str) -> None:
        self._note = note
        self.query_one(".note", Label).update(Text(note))
        self.set_class(bool(note), "has-note")

    def on_mount(self) -> None:
        self.set_class(bool(self._note), "has-note")

    def begin_stream(self) -> None:
        """From now on text goes through a Markdown stream (created with the first piece of text)."""
        self._streaming = True

    async def append(self, text: str) -> None:
        self.text += text
        if self._streaming and self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        if self._stream is not None:
            await self._stream.write(text)
        else:
            await self.markdown.append(text)
        if isinstance(self.parent, ConversationView):
            self.parent.follow()

    async def end_stream(self) -> None:
        self._streaming = False
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            await stream.stop()
        except asyncio.CancelledError:
            # stop() cancels its updater task and awaits it; a task cancelled before its first step re-raises
            # that CancelledError here. Only a cancellation of *this* task may propagate.
            task = asyncio.current_task()
            if task is None or getattr(task, "cancelling", lambda: 1)():
                raise


class ConversationView(VerticalScroll):
    DEFAULT_CSS = """
    ConversationView { height: 1fr; }
    """

    def follow(self) -> None:
        """Anchor to the bottom once the turns overflow the view (anchoring earlier would push short
        conversations to the bottom of the screen)."""
        self.call_after_refresh(self._anchor_if_overflowing)

    def _anchor_if_overflowing(self) -> None:
        if not self.is_anchored and self.virtual_size.height > self.size.height:
            self.anchor()

    async def add_message(self, role: str, text: str = "", note: str = "") -> MessageView:
        view = MessageView(role, text, note)
        await self.mount(view)
        self.follow()
        return view

    async def clear(self) -> None:
        await self.remove_children()
        self.anchor(False)
        self.scroll_home(animate=False)

    @property
    def messages(self) -> list[MessageView]:
        return list(self.query(MessageView))
