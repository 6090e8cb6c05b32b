"""The chat application: load a backend with visible progress, then chat.

`KimiChatApp` is given a way to open its backend (`open_backend(progress) -> ChatBackend`), not a backend:
opening can take minutes for a large model, so it runs on a background thread while the loading screen shows
the progress it reports. The thread is a daemon: quitting during a load exits at once instead of waiting for
the last layer. When the backend is ready the chat screen replaces the loading screen; when opening fails the
loading screen shows the error as text.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from textual.app import App
from textual.binding import Binding

from kimi_local.tui.backend import BackendInfo, ChatBackend
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.screens.chat import ChatScreen
from kimi_local.tui.screens.loading import LoadingScreen
from kimi_local.tui.store import ConversationStore

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what is happening, done, total; total 0 when unknown)
OpenBackend = Callable[[Progress], ChatBackend]

DEMO_NOTICE = "DEMO MODEL with random weights: its replies are meaningless text"


def header_subtitle(info: BackendInfo) -> str:
    if info.is_demo:
        return f"{DEMO_NOTICE} · {info.location}"
    return f"{info.model_name} · {info.location}"


def error_text(exc: BaseException) -> str:
    message = str(exc).strip()
    if isinstance(exc, MemoryError):
        return f"Out of memory while loading the model{': ' + message if message else ''}. Lower the RAM cache " \
               "budget or the context size in kimi-local.toml."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class KimiChatApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "kimi-local"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, open_backend: OpenBackend, settings: ChatSettings, store: ConversationStore,
                 what: str = "Loading the model", telemetry_interval: float = 0.5,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.clock = clock
        self.open_backend = open_backend
        self.settings = settings
        self.store = store
        self.what = what
        self.telemetry_interval = telemetry_interval
        self.backend: ChatBackend | None = None
        self.load_error: str | None = None
        self._gone = threading.Event()

    async def on_mount(self) -> None:
        await self.push_screen(LoadingScreen(self.what))
        threading.Thread(target=self._open_backend_thread, name="kimi-tui-load", daemon=True).start()

    # -- loading thread ------------------------------------------------------------------------------
    def _open_backend_thread(self) -> None:
        def call(callback, *args) -> bool:
            if self._gone.is_set():
                return False
            try:
                self.call_from_thread(callback, *args)
            except RuntimeError:  # the app exited between the check and the call
                return False
            except Exception:  # a display problem must not fail the loading itself
                log.exception("loading screen update failed")
            return True

        def progress(stage: str, done: int, total: int) -> None:
            call(self._show_load_progress, stage, done, total)

        try:
            backend = self.open_backend(progress)
        except BaseException as exc:  # shown in the app; the details go to the log
            log.debug("opening the backend failed", exc_info=True)
            call(self._show_load_error, error_text(exc))
            return
        if not call(self._backend_ready, backend):  # the person quit while we were loading
            backend.close()

    # -- event loop ----------------------------------------------------------------------------------
    def _show_load_progress(self, stage: str, done: int, total: int) -> None:
        if isinstance(self.screen, LoadingScreen):
            self.screen.set_progress(stage, done, total)

    def _show_load_error(self, message: str) -> None:
        self.load_error = message
        if isinstance(self.screen, LoadingScreen):
            self.screen.show_error(message)

    def _backend_ready(self, backend: ChatBackend) -> None:
        self.backend = backend
        screen = ChatScreen(backend, self.store, self.settings, self.telemetry_interval, self.clock)
        # Titles are per screen: changing the app's sub_title would poke the Header of the screen being replaced.
        screen.sub_title = header_subtitle(backend.info)
        self.switch_screen(screen)

    async def on_unmount(self) -> None:
        self._gone.set()
        if self.backend is not None:
            await self.backend.aclose()

