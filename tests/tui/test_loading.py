"""Opening the backend: progress on the loading screen while the app stays responsive, readable errors, the
demo-model header, and the app attached to a server by URL."""

from __future__ import annotations

import asyncio
import threading
import time

from kimi_local.tui.app import DEMO_NOTICE, KimiChatApp
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.opening import open_remote
from kimi_local.tui.screens.chat import ChatScreen
from kimi_local.tui.screens.loading import LoadingScreen
from kimi_local.tui.store import ConversationStore
from kimi_local.tui.widgets.prompt_input import PromptInput
from kimi_local.tui.widgets.telemetry_panel import TelemetryPanel
from textual.widgets import ProgressBar
from tests.tui.conftest import SIZE, ScriptedBackend, screen_text, wait_until
from tests.tui.fake_openai_server import FakeServer


def test_progress_is_shown_while_loading_and_the_app_can_quit(tmp_path):
    release = threading.Event()
    reported = threading.Event()
    backend = ScriptedBackend(["hi"])

    def open_backend(progress):
        progress("loading layers", 2, 61)
        reported.set()
        release.wait(10)  # a slow load
        return backend

    async def go():
        app = KimiChatApp(open_backend, ChatSettings(), ConversationStore(tmp_path), what="Loading Kimi-K2")
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: reported.is_set() and app.screen.stage == "loading layers")
            assert isinstance(app.screen, LoadingScreen)
            bar = app.screen.query_one(ProgressBar)
            assert (bar.progress, bar.total) == (2, 61)
            text = screen_text(app)
            assert "Loading Kimi-K2" in text and "loading layers" in text
            t0 = time.monotonic()
            await pilot.press("ctrl+q")  # responsive: quits while the loader thread is still busy
        assert time.monotonic() - t0 < 2.0
        release.set()
        await asyncio.sleep(0.1)
        return app

    asyncio.run(go())
    deadline = time.monotonic() + 5
    while not backend.closed and time.monotonic() < deadline:  # loaded after the app quit: released
        time.sleep(0.01)
    assert backend.closed


def test_out_of_memory_is_a_readable_message(tmp_path):
    def open_backend(progress):
        raise MemoryError("expert cache needs 300 GiB, 200 GiB free")

    async def go():
        app = KimiChatApp(open_backend, ChatSettings(), ConversationStore(tmp_path))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.load_error is not None)
            await pilot.pause(0.05)
            assert app.load_error.startswith("Out of memory while loading the model: expert cache needs 300 GiB")
            assert "RAM cache budget" in app.load_error
            assert "Out of memory" in screen_text(app)

    asyncio.run(go())


def test_demo_header_says_random_weights(tmp_path):
    async def go():
        backend = ScriptedBackend(["x"], is_demo=True)
        app = KimiChatApp(lambda progress: backend, ChatSettings(), ConversationStore(tmp_path))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
            await pilot.pause(0.05)
            assert "DEMO MODEL with random weights" in DEMO_NOTICE
            assert DEMO_NOTICE in screen_text(app).splitlines()[0]
        assert backend.closed  # released when the app exits

    asyncio.run(go())


def test_the_app_attached_to_a_server(tmp_path):
    pieces = ["Hello ", "from ", "the ", "server."]
    with FakeServer(pieces) as server:
        async def go():
            app = KimiChatApp(open_remote(server.url), ChatSettings(system_prompt="S", max_tokens=9),
                              ConversationStore(tmp_path), telemetry_interval=0.05)
            async with app.run_test(size=SIZE) as pilot:
                await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.query(PromptInput))
                screen = app.screen
                assert screen.sub_title == f"fake-kimi · {server.url}"
                prompt = screen.query_one(PromptInput)
                prompt.text = "Hi there"
                await pilot.press("enter")
                await wait_until(pilot, lambda: len(screen.conversation.messages) == 2 and not screen.is_generating)
                await pilot.pause(0.2)
                assert screen.conversation.messages[-1].content == "".join(pieces)
                assert screen.conversation.messages[-1].finish_reason == "length"
                values = screen.query_one(TelemetryPanel).values
                assert values["hit rate"] == "75.0%" and values["RAM tier"] == "1.0 GiB"
                assert values["context"] == f"{17 + len(pieces)} / 4096"
                assert values["requests"] == "1 run, 2 wait"
                assert screen.telemetry.routing.layer_ids == (1, 2)
            return server.requests

        requests = asyncio.run(go())
    assert requests[0]["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi there"}]
    assert requests[0]["max_tokens"] == 9
