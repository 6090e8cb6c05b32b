"""Pilot tests of the chat app on the tiny checkpoint (the real engine, in this process): a streamed answer,
stop, regenerate, new conversation, settings, telemetry, saving and reopening, copying, history, errors."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from kimi_local.tui.app import KimiChatApp
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.opening import open_local
from kimi_local.tui.screens.chat import ChatScreen
from kimi_local.tui.screens.conversations import ConversationsScreen
from kimi_local.tui.screens.loading import LoadingScreen
from kimi_local.tui.screens.settings import SettingsScreen
from kimi_local.tui.store import ConversationStore
from kimi_local.tui.widgets.prompt_input import PromptInput
from kimi_local.tui.widgets.telemetry_panel import TelemetryPanel
from tests.tui.conftest import SIZE, screen_text, wait_until

GREEDY = ChatSettings(system_prompt="Be brief.", temperature=0.0, top_p=1.0, max_tokens=16)


def make_app(tiny_checkpoint, tiny_config, tmp_path, settings=GREEDY, model=None):
    store = ConversationStore(tmp_path / "conversations")
    return KimiChatApp(open_local(model or str(tiny_checkpoint), tiny_config), settings, store,
                       telemetry_interval=0.1)


async def ready(app, pilot) -> ChatScreen:
    await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen) or app.load_error is not None)
    assert app.load_error is None, app.load_error
    await wait_until(pilot, lambda: app.screen.query(PromptInput))  # composed
    return app.screen


async def send(pilot, screen: ChatScreen, text: str) -> None:
    """Type `text` and press Enter. Pilot's key press waits until the app is idle, so the reply may well be
    complete when this returns."""
    prompt = screen.query_one(PromptInput)
    prompt.focus()
    prompt.text = text
    before = screen._reply
    await pilot.press("enter")
    await wait_until(pilot, lambda: screen._reply is not before)  # a reply worker started


def submit_without_waiting(screen: ChatScreen, text: str) -> None:
    """What Enter does, without letting Pilot wait for the app to go idle (to watch the reply arrive)."""
    prompt = screen.query_one(PromptInput)
    prompt.post_message(PromptInput.Submitted(prompt, text))


async def finished(pilot, screen: ChatScreen) -> None:
    await wait_until(pilot, lambda: not screen.is_generating)
    await pilot.pause(0.05)


def test_streamed_answer_and_telemetry(tiny_checkpoint, tiny_config, tmp_path):
    async def go():
        app = make_app(tiny_checkpoint, tiny_config, tmp_path, settings=replace(GREEDY, max_tokens=40))
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(app, pilot)
            panel = screen.query_one(TelemetryPanel)
            assert panel.values["generate"] == "n/a"
            submit_without_waiting(screen, "Tell me about experts.")
            partial_lengths = set()
            for _ in range(2000):
                views = screen.view.messages
                if screen.is_generating and len(views) == 2 and views[1].text:
                    partial_lengths.add(len(views[1].text))
                if len(screen.conversation.messages) == 2:
                    break
                await asyncio.sleep(0.002)
            await finished(pilot, screen)
            user, answer = screen.conversation.messages
            assert (user.role, user.content) == ("user", "Tell me about experts.")
            assert answer.role == "assistant" and answer.content and answer.finish_reason in ("stop", "length")
            assert len(partial_lengths) >= 2, "the answer did not arrive in pieces"
            assert screen.view.messages[1].text == answer.content
            assert screen.view.messages[1].markdown.source == answer.content  # what the Markdown widget shows
            await pilot.pause(0.3)  # a telemetry tick after the reply
            values = panel.values
            meter = screen.meter
            assert values["generate"].endswith("tok/s") and values["prompt"].endswith("tok/s")
            assert values["first token"] != "n/a"
            assert values["context"] == f"{meter.prompt_tokens + meter.generated_tokens} / 512"
            assert values["process RSS"].endswith("iB") and values["free RAM"].endswith("iB")
            assert values["hit rate"].endswith("%")  # the expert store's hit rate
            routing = screen.telemetry.routing
            assert routing.routed_tokens == meter.prompt_tokens + meter.generated_tokens - 1
            text = screen_text(app)
            assert "Tell me about experts." in text and "Speed" in text and "L1 " in text

    asyncio.run(go())


def test_stop_keeps_the_partial_answer(tiny_checkpoint, tiny_config, tmp_path):
    async def go():
        # Greedy: this prompt runs to max_tokens on the tiny checkpoint (no stop id before 400 tokens).
        app = make_app(tiny_checkpoint, tiny_config, tmp_path, settings=ChatSettings("Be brief.", 0.0, 1.0, 400))
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(app, pilot)
            submit_without_waiting(screen, "Write a long story.")
            for _ in range(5000):
                if len(screen.view.messages) == 2 and len(screen.view.messages[1].text) > 3:
                    break
                await asyncio.sleep(0.002)
            assert screen.is_generating
            await pilot.press("escape")
            await wait_until(pilot, lambda: not screen.is_generating, timeout=2.0)
            answer = screen.conversation.messages[-1]
            assert answer.role == "assistant" and answer.finish_reason == "stopped"
            assert answer.content == screen.view.messages[-1].text and answer.content
            assert screen.meter.generated_tokens < 300
            engine = app.backend.service.engine
            await wait_until(pilot, lambda: engine.num_running == 0, timeout=5.0)
            assert "[stopped]" in screen_text(app)
            # The stopped turn was saved as it was shown.
            saved = app.store.load(screen.conversation.id)
            assert saved.messages[-1].content == answer.content and saved.messages[-1].finish_reason == "stopped"

    asyncio.run(go())


def test_regenerate_replaces_the_last_answer(tiny_checkpoint, tiny_config, tmp_path):
    async def go():
        app = make_app(tiny_checkpoint, tiny_config, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(app, pilot)
            await send(pilot, screen, "Hello")
            await finished(pilot, screen)
            first = screen.conversation.messages[-1].content
            finished_before = app.backend.service.stats().finished_requests
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: app.backend.service.stats().finished_requests > finished_before)
            await finished(pilot, screen)
            assert [m.role for m in screen.conversation.messages] == ["user", "assistant"]
            assert [v.role for v in screen.view.messages] == ["user", "assistant"]
            assert screen.conversation.messages[-1].content == first  # greedy: the same answer again

    asyncio.run(go())


def test_new_conversation_and_reopen_a_saved_one(tiny_checkpoint, tiny_config, tmp_path):
    async def go():
        app = make_app(tiny_checkpoint, tiny_config, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(app, pilot)
            await send(pilot, screen, "First question")
            await finished(pilot, screen)
            old = screen.conversation
            await pilot.press("ctrl+n")
            await pilot.pause(0.05)
            assert screen.conversation.id != old.id and screen.conversation.messages == []
            assert screen.view.messages == []
            assert app.store.load(old.id).messages == old.messages  # saved when its reply finished
            await pilot.press("ctrl+o")
            await wait_until(pilot, lambda: isinstance(app.screen, ConversationsScreen))
            assert [s.id for s in app.screen.summaries] == [old.id]
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.screen is screen and len(screen.view.messages) == 2)
            assert screen.conversation.id == old.id and screen.conversation.messages == old.messages
            assert [v.text for v in screen.view.messages] == [m.content for m in old.messages]
            # The reopened conversation continues: its history goes with the next prompt.
            await send(pilot, screen, "Second question")
            await finished(pilot, screen)
            assert [m.role for m in app.store.load(old.id).messages] == ["user", "assistant"] * 2

    asyncio.run(go())


def test_settings_change_takes_effect(tiny_checkpoint, tiny_config, tmp_path):
    async def go():
        app = make_app(tiny_checkpoint, tiny_config, tmp_path, settings=ChatSettings(temperature=1.0, max_tokens=200))
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(app, pilot)
            await pilot.press("f2")
            await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            settings_screen = app.screen
            settings_screen.query_one("#max_tokens").value = "abc"
            await pilot.press("ctrl+s")
            await pilot.pause(0.05)
            assert app.screen is settings_screen  # invalid: stays open and says why
            assert "max_tokens" in str(settings_screen.query_one("#settings-error").render())
            settings_screen.query_one("#max_tokens").value = "3"
            settings_screen.query_one("#temperature").value = "0"
            settings_screen.query_one("#system_prompt").text = "Answer in French."
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: app.screen is screen)
            assert screen.conversation.settings == ChatSettings("Answer in French.", 0.0, 1.0, 3)
            await send(pilot, screen, "Hi")
            await finished(pilot, screen)
            answer = screen.conversation.messages[-1]
            assert screen.meter.generated_tokens <= 3
            if screen.meter.generated_tokens == 3:
                assert answer.finish_reason == "length" and "[reached max tokens]" in screen_text(app)
            assert app.store.load(screen.conversation.id).settings.max_tokens == 3

    asyncio.run(go())


def test_copy_last_answer_and_history(tiny_checkpoint, tiny_config, tmp_path):
    async def go():
        app = make_app(tiny_checkpoint, tiny_config, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(app, pilot)
            await pilot.press("f3")
            assert app.clipboard == ""  # nothing to copy yet
            await send(pilot, screen, "one")
            await finished(pilot, screen)
            await pilot.press("f3")
            assert app.clipboard == screen.conversation.messages[-1].content
            await send(pilot, screen, "two\nlines")
            await finished(pilot, screen)
            prompt = screen.query_one(PromptInput)
            prompt.focus()
            await pilot.press(*"dra", "f", "t")
            await pilot.press("up")
            assert prompt.text == "two\nlines"
            prompt.move_cursor((0, 0))
            await pilot.press("up")
            assert prompt.text == "one"
            await pilot.press("down")
            assert prompt.text == "two\nlines"
            await pilot.press("down")
            assert prompt.text == "draft"
            await pilot.press("ctrl+j")
            await pilot.press("x")
            assert prompt.text == "draft\nx"  # Ctrl+J starts a new line, it does not send

    asyncio.run(go())


def test_missing_model_is_a_message_not_a_traceback(tiny_config, tmp_path):
    async def go():
        missing = str(tmp_path / "no-such-model")
        app = KimiChatApp(open_local(missing, tiny_config), GREEDY, ConversationStore(tmp_path))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.load_error is not None)
            await pilot.pause(0.05)
            assert isinstance(app.screen, LoadingScreen)
            assert "no-such-model" in app.load_error and "does not exist" in app.load_error
            assert app.screen.error == app.load_error
            text = screen_text(app)
            assert "FileNotFoundError: model directory" in text and "Press Ctrl+Q to quit." in text
            assert "Traceback" not in text
            await pilot.press("ctrl+q")

    asyncio.run(go())


def test_prompt_too_long_shows_an_error_and_the_app_goes_on(tiny_checkpoint, tiny_config, tmp_path):
    async def go():
        app = make_app(tiny_checkpoint, tiny_config, tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(app, pilot)
            await send(pilot, screen, "word " * 1000)
            await finished(pilot, screen)
            assert "too long for the context" in screen_text(app)
            assert [m.role for m in screen.conversation.messages] == ["user"]  # no empty answer recorded
            await pilot.press("ctrl+n")
            await send(pilot, screen, "short")
            await finished(pilot, screen)
            assert screen.conversation.messages[-1].role == "assistant"

    asyncio.run(go())
