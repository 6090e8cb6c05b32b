"""Saved conversations: JSON round trip, atomic writes, validation errors naming file and field, listing."""

from __future__ import annotations

import json
import os

import pytest

from kimi_local.tui.chat_settings import ChatSettings
from kimi_local.tui.conversation import ChatMessage, Conversation, ConversationError, new_conversation_id
from kimi_local.tui.store import ConversationStore


def sample(title_text: str = "How do MoE layers route tokens?", updated: float = 1000.0) -> Conversation:
    return Conversation(
        settings=ChatSettings(system_prompt="Be brief.", temperature=0.3, top_p=0.9, max_tokens=77),
        messages=[ChatMessage("user", title_text), ChatMessage("assistant", "With a **router**. 中文 🙂", "stop"),
                  ChatMessage("user", "More?"), ChatMessage("assistant", "partial", "stopped")],
        model="tiny", created=900.0, updated=updated,
    )


def test_round_trip(tmp_path):
    store = ConversationStore(tmp_path / "conversations")
    conv = sample()
    path = store.save(conv)
    assert path == tmp_path / "conversations" / f"{conv.id}.json"
    back = store.load(conv.id)
    assert back.messages == conv.messages
    assert back.settings == conv.settings
    assert (back.id, back.model, back.created, back.updated) == (conv.id, "tiny", 900.0, 1000.0)
    assert back.display_title == "How do MoE layers route tokens?"
    assert "中文 🙂" in path.read_text(encoding="utf-8")  # stored as readable UTF-8
    assert back.to_messages()[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in back.to_messages()] == ["system", "user", "assistant", "user", "assistant"]


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path, monkeypatch):
    store = ConversationStore(tmp_path)
    conv = sample()
    store.save(conv)
    before = (tmp_path / f"{conv.id}.json").read_text()
    conv.messages.append(ChatMessage("user", "x" * 1000))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.save(conv)
    monkeypatch.undo()
    assert (tmp_path / f"{conv.id}.json").read_text() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{conv.id}.json"]  # temp file removed
    store.save(conv)
    assert len(store.load(conv.id).messages) == 5


def test_list_newest_first_and_skips_broken_files(tmp_path, caplog):
    store = ConversationStore(tmp_path)
    old, new = sample("old one", updated=100.0), sample("new one", updated=200.0)
    store.save(old)
    store.save(new)
    (tmp_path / f"{new_conversation_id()}.json").write_text("{not json")
    (tmp_path / "notes.json").write_text("{}")  # not a conversation file name: ignored
    summaries = store.list()
    assert [s.title for s in summaries] == ["new one", "old one"]
    assert summaries[0].num_messages == 4
    assert "not a readable JSON file" in caplog.text
    assert ConversationStore(tmp_path / "missing").list() == []


def test_ids_cannot_escape_the_directory(tmp_path):
    store = ConversationStore(tmp_path)
    for bad in ("../../etc/passwd", "x", "20250101-000000-zzzzzz"):
        with pytest.raises(ConversationError, match="not a conversation id"):
            store.load(bad)


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(id="../x"), "id"),
    (lambda d: d.update(created="yesterday"), "created"),
    (lambda d: d["settings"].update(temperature=5), "temperature"),
    (lambda d: d["settings"].update(colour="blue"), "colour"),
    (lambda d: d.update(messages={}), "messages"),
    (lambda d: d["messages"][1].update(role="tool"), r"messages\[1\].role"),
    (lambda d: d["messages"][0].update(content=None), r"messages\[0\].content"),
    (lambda d: d["messages"][0].update(finish_reason=3), r"messages\[0\].finish_reason"),
])
def test_validation_names_file_and_field(tmp_path, mutate, where):
    store = ConversationStore(tmp_path)
    conv = sample()
    path = store.save(conv)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConversationError, match=where) as info:
        store.load(conv.id)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path):
    conv_id = new_conversation_id()
    with pytest.raises(ConversationError, match="no such conversation file"):
        ConversationStore(tmp_path).load(conv_id)


def test_title_is_the_first_prompt_shortened():
    conv = Conversation(messages=[ChatMessage("user", "  word " * 40)])
    assert len(conv.display_title) == 60 and conv.display_title.endswith("…")
    assert Conversation().display_title == "(empty)"
    assert Conversation(settings=ChatSettings(system_prompt="")).to_messages() == []
