"""`kimi-local chat`: flags reach the app (settings, model or URL, conversations directory); bad flags and bad
settings are one clear line. The app itself is driven by tests/tui; here its `run` is replaced."""

from __future__ import annotations

import pytest

from kimi_local.cli import main
from kimi_local.tui.app import KimiChatApp
from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.remote_backend import RemoteBackend
from kimi_local.tui.store import ConversationStore
from tests.tui.fake_openai_server import FakeServer


@pytest.fixture
def started(monkeypatch):
    """The apps `kimi-local chat` would run, captured instead of taking over the terminal."""
    apps = []
    monkeypatch.setattr(KimiChatApp, "run", lambda self, *a, **k: apps.append(self))
    return apps


def test_local_model_with_setting_flags(tiny_checkpoint, tmp_path, started):
    code = main(["chat", "--model", str(tiny_checkpoint), "--temperature", "0.25", "--max-tokens", "7",
                 "--system-prompt", "Be terse.", "--expert-backend", "torch", "--conversations-dir", str(tmp_path)])
    assert code == 0
    (app,) = started
    assert app.settings == ChatSettings("Be terse.", 0.25, 1.0, 7)
    assert isinstance(app.store, ConversationStore) and app.store.root == tmp_path
    assert str(tiny_checkpoint) in app.what
    steps = []
    backend = app.open_backend(lambda *step: steps.append(step))  # what the loading thread would do
    try:
        assert backend.info.location == str(tiny_checkpoint)
        assert backend.service.engine.model.experts.kernel.__class__.__name__ == "TorchReferenceExperts"
        assert any(stage == "loading layers" for stage, _, _ in steps)
    finally:
        backend.close()


def test_url_attaches_to_a_server(tmp_path, started):
    with FakeServer(["x"], api_key="k") as server:
        assert main(["chat", "--url", server.url, "--api-key", "k", "--conversations-dir", str(tmp_path)]) == 0
        (app,) = started
        backend = app.open_backend(lambda *step: None)
        assert isinstance(backend, RemoteBackend) and backend.info.model_name == "fake-kimi"
        assert app.what == f"Connecting to {server.url}"


def test_model_and_url_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--model", "a", "--url", "http://b"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_bad_setting_is_one_line(tmp_path, started, capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--model", str(tmp_path), "--temperature", "3"])
    err = capsys.readouterr().err
    assert "temperature" in err.splitlines()[-1] and "Traceback" not in err
    assert started == []


def test_missing_model_is_reported_in_the_app(tmp_path, started):
    """The app starts and its loading thread gets the error, which the loading screen shows (tests/tui)."""
    assert main(["chat", "--model", str(tmp_path / "nope"), "--conversations-dir", str(tmp_path)]) == 0
    (app,) = started
    with pytest.raises(FileNotFoundError, match="nope"):
        app.open_backend(lambda *step: None)
