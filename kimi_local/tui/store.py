"""Saved conversations: one JSON file per conversation in the user data directory.

Writes are atomic (a temporary file in the same directory, flushed and fsynced, then `os.replace`), so a crash
or a full disk mid-save leaves either the old file or the new one, never half of one. File names are the
conversation ids, which are checked against a strict pattern, so no id read from a file can name a path
outside the directory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from kimi_local.atomic_file import write_text_atomic
from kimi_local.tui.conversation import ID_PATTERN, Conversation, ConversationError

log = logging.getLogger(__name__)


def default_conversations_dir() -> Path:
    return Path(platformdirs.user_data_dir("kimi-local")) / "conversations"


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    title: str
    updated: float
    num_messages: int
    path: Path


class ConversationStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, conversation_id: str) -> Path:
        if not ID_PATTERN.match(conversation_id):
            raise ConversationError(f"not a conversation id: {conversation_id!r}")
        return self.root / f"{conversation_id}.json"

    def save(self, conversation: Conversation) -> Path:
        path = self.path_for(conversation.id)
        text = json.dumps(conversation.to_json(), ensure_ascii=False, indent=1) + "\n"
        return write_text_atomic(path, text)

    def load(self, conversation_id: str) -> Conversation:
        return self.load_file(self.path_for(conversation_id))

    @staticmethod
    def load_file(path: Path) -> Conversation:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConversationError(f"{path}: no such conversation file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversationError(f"{path}: not a readable JSON file ({exc})") from None
        return Conversation.from_json(data, str(path))

    def list(self) -> list[ConversationSummary]:
        """Saved conversations, most recently updated first; unreadable files are skipped (and logged)."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.glob("*.json"):
            if not ID_PATTERN.match(path.stem):
                continue
            try:
                conv = self.load_file(path)
            except ConversationError as exc:
                log.warning("skipping %s", exc)
                continue
            out.append(ConversationSummary(conv.id, conv.display_title, conv.updated, len(conv.messages), path))
        return sorted(out, key=lambda s: (s.updated, s.id), reverse=True)

    def delete(self, conversation_id: str) -> None:
        self.path_for(conversation_id).unlink(missing_ok=True)
