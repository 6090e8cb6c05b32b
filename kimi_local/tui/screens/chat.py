"""The main screen: the conversation, the prompt box, and the telemetry panel.

A reply runs in one exclusive async worker that reads the backend's chunk stream and feeds the assistant
turn's Markdown stream. Stopping cancels that worker: the backend stream is closed at once (the engine
aborts the request, or the HTTP connection closes), and the worker's cleanup keeps the partial text as the
turn's content, marked "stopped". The conversation is saved whenever a reply ends (a reply that failed
before any text is not recorded as a turn; its error stays on screen).

Actions that change the conversation while a reply streams (regenerate, new, open) first stop the reply and
wait for its cleanup, so a late cleanup can never write into the next conversation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import Worker, WorkerCancelled, WorkerError, WorkerFailed

from kimi_local.tui.backend import BackendError, ChatBackend
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.conversation import ChatMessage, Conversation, ConversationError
from kimi_local.tui.reply_meter import ReplyMeter
from kimi_local.tui.store import ConversationStore
from kimi_local.tui.telemetry import Telemetry
from kimi_local.tui.widgets.conversation_view import ConversationView, MessageView
from kimi_local.tui.widgets.prompt_input import PromptInput
from kimi_local.tui.widgets.telemetry_panel import TelemetryPanel

log = logging.getLogger(__name__)

READY = "Enter sends · Ctrl+J newline · ↑↓ history"
NOTES = {"length": "[reached max tokens]", "stopped": "[stopped]"}


class ChatScreen(Screen):
    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=True),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("f3", "copy_last", "Copy answer"),
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+o", "open_conversation", "Open"),
        Binding("f2", "settings", "Settings"),
    ]
    AUTO_FOCUS = "#prompt"

    def __init__(self, backend: ChatBackend, store: ConversationStore, settings: ChatSettings,
                 telemetry_interval: float = 0.5, clock: Callable[[], float] = time.perf_counter) -> None:
        """`clock` times the replies (tests pass a fake one for deterministic figures)."""
        super().__init__(id="chat")
        self.clock = clock
        self.backend = backend
        self.store = store
        self.conversation = Conversation(settings=settings, model=backend.info.model_name)
        self.telemetry_interval = telemetry_interval
        self.meter: ReplyMeter | None = None
        self.telemetry: Telemetry | None = None
        self._reply: Worker | None = None
        self._telemetry_busy = False

    # -- layout --------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                yield ConversationView(id="conversation")
                yield Static(Text(READY), id="status")
                yield PromptInput(id="prompt", placeholder="Message Kimi…")
            yield TelemetryPanel(id="telemetry")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.telemetry_interval, self.refresh_telemetry)
        self.call_later(self.refresh_telemetry)

    # -- state helpers -------------------------------------------------------------------------------
    @property
    def is_generating(self) -> bool:
        return self._reply is not None and self._reply.is_running

    @property
    def view(self) -> ConversationView:
        return self.query_one(ConversationView)

    def set_status(self, text: str, style: str = "") -> None:
        self.query_one("#status", Static).update(Text(text, style=style))

    async def stop_reply(self) -> None:
        """Stop the running reply (if any) and wait until its partial turn is recorded."""
        worker = self._reply
        if worker is None or worker.is_finished:
            return
        worker.cancel()
        try:
            await worker.wait()
        except (WorkerCancelled, WorkerFailed, WorkerError):  # WorkerError: cancelled before it started
            pass

    # -- sending -------------------------------------------------------------------------------------
    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        if self.is_generating:
            self.set_status("A reply is still being written: press Esc to stop it first.", "bold yellow")
            return
        event.prompt_input.clear()
        await self.send(event.text)

    async def send(self, text: str) -> None:
        self.conversation.messages.append(ChatMessage("user", text))
        await self.view.add_message("user", text)
        self.start_reply()

    def start_reply(self) -> None:
        self._reply = self._run_reply(self.conversation)

    @work(exclusive=True, group="reply")
    async def _run_reply(self, conversation: Conversation) -> None:
        messages = conversation.to_messages()
        settings = conversation.settings
        meter = self.meter = ReplyMeter(self.clock)
        self.set_status("Generating… (Esc stops)", "italic")
        view: MessageView | None = None
        finish, error = None, None
        try:
            view = await self.view.add_message("assistant")
            view.begin_stream()
            async with aclosing(self.backend.stream_reply(messages, settings)) as chunks:
                async for chunk in chunks:
                    meter.observe(chunk)
                    if chunk.text:
                        await view.append(chunk.text)
            finish = meter.finish_reason or "stop"
        except asyncio.CancelledError:
            finish = "stopped"
            raise
        except BackendError as exc:
            finish, error = "error", str(exc)
        except Exception as exc:  # never a traceback in the chat: show it, log the details
            log.exception("reply failed")
            finish, error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            if view is not None:
                self._finish_reply(conversation, view, finish or "stopped", error)
                await view.end_stream()

    def _finish_reply(self, conversation: Conversation, view: MessageView, finish: str, error: str | None) -> None:
        """Record the turn (if it has any text) and save, then show how it ended."""
        if view.text:
            conversation.messages.append(ChatMessage("assistant", view.text, finish))
        self._autosave(conversation)
        try:
            view.set_note(f"[error] {error}" if error else NOTES.get(finish, ""))
            if error:
                self.set_status(f"Error: {error}", "bold red")
            elif finish == "stopped":
                self.set_status("Stopped; the partial answer is kept.")
            else:
                self.set_status(READY)
        except NoMatches:  # the app is closing while the reply ends
            return
        self.call_later(self.refresh_telemetry)

    def _autosave(self, conversation: Conversation) -> None:
        if not conversation.messages:
            return
        conversation.updated = time.time()
        try:
            self.store.save(conversation)
        except OSError as exc:
            self.notify(f"could not save the conversation: {exc}", severity="error", markup=False)

    # -- telemetry -----------------------------------------------------------------------------------
    async def refresh_telemetry(self) -> None:
        if self._telemetry_busy:  # a slow /metrics must not pile up requests
            return
        self._telemetry_busy = True
        try:
            self.telemetry = await self.backend.telemetry()
        except Exception as exc:
            log.debug("telemetry failed: %s", exc)
        finally:
            self._telemetry_busy = False
        try:
            self.query_one(TelemetryPanel).show(self.telemetry, self.meter)
        except NoMatches:  # not composed yet, or closing
            pass

    # -- actions -------------------------------------------------------------------------------------
    async def action_stop(self) -> None:
        if self.is_generating:
            await self.stop_reply()

    async def action_regenerate(self) -> None:
        await self.stop_reply()
        messages = self.conversation.messages
        if messages and messages[-1].role == "assistant":
            messages.pop()
        views = self.view.messages  # the last view may be an answer, or a failed/empty one never recorded
        if views and views[-1].role == "assistant":
            await views[-1].remove()
        if not messages or messages[-1].role != "user":
            self.set_status("Nothing to regenerate yet.", "bold yellow")
            return
        self.start_reply()

    async def action_new_conversation(self) -> None:
        await self.stop_reply()
        self.conversation = Conversation(settings=self.conversation.settings, model=self.backend.info.model_name)
        self.meter = None
        await self.view.clear()
        self.set_status("New conversation. " + READY)

    def action_copy_last(self) -> None:
        answer = next((m.content for m in reversed(self.conversation.messages) if m.role == "assistant"), None)
        if not answer:
            self.notify("There is no answer to copy yet.", severity="warning", markup=False)
            return
        self.app.copy_to_clipboard(answer)
        self.notify(f"Copied the last answer ({len(answer)} characters).", markup=False)

    def action_save(self) -> None:
        if not self.conversation.messages:
            self.notify("Nothing to save yet.", severity="warning", markup=False)
            return
        self._autosave(self.conversation)
        self.notify(f"Saved to {self.store.path_for(self.conversation.id)}", markup=False)

    def action_settings(self) -> None:
        from kimi_local.tui.screens.settings import SettingsScreen

        def apply(settings: ChatSettings | None) -> None:
            if settings is not None:
                self.conversation.settings = settings
                self.notify("Settings saved; they apply from the next reply.", markup=False)

        self.app.push_screen(SettingsScreen(self.conversation.settings), apply)

    def action_open_conversation(self) -> None:
        from kimi_local.tui.screens.conversations import ConversationsScreen

        async def open_chosen(conversation_id: str | None) -> None:
            if conversation_id is not None:
                await self.open_conversation(conversation_id)

        self.app.push_screen(ConversationsScreen(self.store), open_chosen)

    async def open_conversation(self, conversation_id: str) -> None:
        await self.stop_reply()
        try:
            conversation = self.store.load(conversation_id)
        except ConversationError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        self.conversation = conversation
        self.meter = None
        await self.view.clear()
        prompt = self.query_one(PromptInput)
        for message in conversation.messages:
            await self.view.add_message(message.role, message.content, NOTES.get(message.finish_reason or "", ""))
            if message.role == "user":
                prompt.add_history(message.content)
        self.set_status(f"Opened “{conversation.display_title}”. " + READY)
