"""The settings a person changes while chatting: system prompt, temperature, top-p, max tokens.

They start from the `[tui]` section of the configuration, can be edited in the app, and are stored with each
saved conversation. The sampling ranges are the engine's own (`SamplingParams` validates them) and
temperature is capped at the OpenAI API's 2, so a value the settings screen accepts works locally and with a
remote server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kimi_local.config import TuiSection
from kimi_local.engine.sampling import SamplingParams

MAX_TOKENS_LIMIT = 1_000_000
MAX_TEMPERATURE = 2.0  # the OpenAI API's limit, so a setting works with a remote server too


@dataclass(frozen=True)
class ChatSettings:
    system_prompt: str = TuiSection.system_prompt
    temperature: float = TuiSection.temperature
    top_p: float = TuiSection.top_p
    max_tokens: int = TuiSection.max_tokens

    def __post_init__(self) -> None:
        if not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt must be text, got {type(self.system_prompt).__name__}")
        for name, kind in (("temperature", (int, float)), ("top_p", (int, float)), ("max_tokens", int)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise ValueError(f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {self.max_tokens}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {self.temperature}")
        self.sampling_params()  # the engine's own range checks (top_p, ...)

    @classmethod
    def from_config(cls, section: TuiSection) -> "ChatSettings":
        return cls(section.system_prompt, section.temperature, section.top_p, section.max_tokens)

    @classmethod
    def from_dict(cls, data: Any, where: str = "settings") -> "ChatSettings":
        """From a saved conversation's settings object; missing keys take the defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: must be an object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def sampling_params(self, stop_ids: frozenset[int] = frozenset(), max_new_tokens: int | None = None
                        ) -> SamplingParams:
        return SamplingParams(temperature=float(self.temperature), top_p=float(self.top_p),
                              max_new_tokens=max_new_tokens or self.max_tokens, stop_ids=stop_ids)
