"""Snapshot of the main screen at 100x30: a demo-model header, a streamed Markdown answer, the telemetry panel
with its heat map. The content is deterministic (a scripted backend, fixed telemetry, a fake clock, no cursor
blink), and the screen is compared as plain text against `snapshots/main_screen.txt`, which is easy to review
in a diff. Set KIMI_UPDATE_SNAPSHOTS=1 to rewrite the file after an intended change, and read the diff.

(pytest-textual-snapshot compares SVG screenshots; it pins syrupy 4.8, which needs pytest < 9, so it cannot
be installed beside this project's pytest 9.)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from kimi_local.tui.app import KimiChatApp
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.screens.chat import ChatScreen
from kimi_local.tui.store import ConversationStore
from kimi_local.tui.widgets.prompt_input import PromptInput
from tests.tui.conftest import SIZE, ScriptedBackend, screen_text, wait_until

EXPECTED = Path(__file__).parent / "snapshots" / "main_screen.txt"
ANSWER = ["## Routing\n\n", "Each token picks **8 of 384** experts:\n\n", "- a router scores them\n",
          "- the top 8 run\n\n", "`sigmoid` scores, then top-k."]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.125
        return self.now


def render_main_screen(tmp_path) -> str:
    async def go():
        backend = ScriptedBackend(ANSWER, is_demo=True)
        app = KimiChatApp(lambda progress: backend, ChatSettings(), ConversationStore(tmp_path),
                          telemetry_interval=0.05, clock=FakeClock())
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.query(PromptInput))
            screen = app.screen
            prompt = screen.query_one(PromptInput)
            prompt.cursor_blink = False
            prompt.text = "How does Kimi-K2 route tokens?"
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(screen.conversation.messages) == 2 and not screen.is_generating)
            await pilot.pause(0.2)  # telemetry ticks
            await screen.refresh_telemetry()
            await pilot.pause()
            return screen_text(app)

    return asyncio.run(go())


def test_main_screen_snapshot(tmp_path):
    actual = render_main_screen(tmp_path)
    if os.environ.get("KIMI_UPDATE_SNAPSHOTS") == "1":
        EXPECTED.write_text(actual + "\n", encoding="utf-8")
    assert EXPECTED.exists(), f"{EXPECTED} is missing; run with KIMI_UPDATE_SNAPSHOTS=1 and review it"
    expected = EXPECTED.read_text(encoding="utf-8").rstrip("\n")
    assert actual == expected, "the main screen changed:\n" + actual


def test_the_snapshot_is_deterministic(tmp_path):
    assert render_main_screen(tmp_path / "a") == render_main_screen(tmp_path / "b")
