"""A conversation: its turns, the settings it runs with, and its JSON form.

Only user and assistant turns are stored; the system prompt lives in the settings and is put in front when the
conversation is sent (`to_messages`). An assistant turn that was interrupted keeps its partial text and records
why it ended (`finish_reason` "stopped"), so a reopened conversation shows what the person saw.

JSON form (version 1):

    {"format": "kimi-local-conversation", "version": 1, "id": "20250101-120000-1a2b3c", "title": "...",
     "created": 1735732800.0, "updated": 1735732900.0, "model": "...",
     "settings": {"system_prompt": ..., "temperature": ..., "top_p": ..., "max_tokens": ...},
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "...", "finish_reason": "stop"}]}
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from kimi_local.tui.chat_settings import ChatSettings

FORMAT = "kimi-local-conversation"
VERSION = 1
ROLES = ("user", "assistant")
TITLE_LENGTH = 60
ID_PATTERN = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


class ConversationError(ValueError):
    """A saved conversation is malformed; the message names the file and field."""


def new_conversation_id(now: float | None = None) -> str:
    """Sortable by creation time, unique enough, and safe as a file name."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass
class ChatMessage:
    role: str
    content: str
    finish_reason: str | None = None  # assistant turns: "stop", "length", "stopped" (interrupted), "error"


@dataclass
class Conversation:
    id: str = field(default_factory=new_conversation_id)
    settings: ChatSettings = field(default_factory=ChatSettings)
    messages: list[ChatMessage] = field(default_factory=list)
    model: str = ""
    title: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @property
    def display_title(self) -> str:
        if self.title:
            return self.title
        first = next((m.content for m in self.messages if m.role == "user"), "")
        line = " ".join(first.split())
        return (line[: TITLE_LENGTH - 1] + "…") if len(line) > TITLE_LENGTH else (line or "(empty)")

    def to_messages(self) -> list[dict]:
        """OpenAI-style messages to send: the system prompt (if any), then the turns."""
        out = [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else []
        return out + [{"role": m.role, "content": m.content} for m in self.messages]

    def to_json(self) -> dict:
        messages = []
        for m in self.messages:
            item = {"role": m.role, "content": m.content}
            if m.finish_reason is not None:
                item["finish_reason"] = m.finish_reason
            messages.append(item)
        return {
            "format": FORMAT, "version": VERSION, "id": self.id, "title": self.display_title,
            "created": self.created, "updated": self.updated, "model": self.model,
            "settings": self.settings.to_dict(), "messages": messages,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "conversation") -> "Conversation":
        def bad(where: str, why: str) -> ConversationError:
            return ConversationError(f"{source}: {where}: {why}")

        if not isinstance(data, dict):
            raise bad("top level", "must be a JSON object")
        if data.get("format") != FORMAT:
            raise bad("format", f"expected {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != VERSION:
            raise bad("version", f"expected {VERSION}, got {data.get('version')!r}")
        conv_id = data.get("id")
        if not isinstance(conv_id, str) or not ID_PATTERN.match(conv_id):
            raise bad("id", f"not a conversation id: {conv_id!r}")
        for key in ("title", "model"):
            if not isinstance(data.get(key, ""), str):
                raise bad(key, "must be a string")
        for key in ("created", "updated"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(key, "must be a number (seconds since the epoch)")
        try:
            settings = ChatSettings.from_dict(data.get("settings", {}), "settings")
        except ValueError as exc:
            raise ConversationError(f"{source}: {exc}") from None
        raw_messages = data.get("messages")
        if not isinstance(raw_messages, list):
            raise bad("messages", "must be a list")
        messages = []
        for i, item in enumerate(raw_messages):
            where = f"messages[{i}]"
            if not isinstance(item, dict):
                raise bad(where, "must be an object")
            if item.get("role") not in ROLES:
                raise bad(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {item.get('role')!r}")
            if not isinstance(item.get("content"), str):
                raise bad(f"{where}.content", "must be a string")
            reason = item.get("finish_reason")
            if reason is not None and not isinstance(reason, str):
                raise bad(f"{where}.finish_reason", "must be a string")
            messages.append(ChatMessage(item["role"], item["content"], reason))
        return cls(id=conv_id, settings=settings, messages=messages, model=data.get("model", ""),
                   title=data.get("title", ""), created=float(data["created"]), updated=float(data["updated"]))
