"""Chat messages -> prompt text and token ids, with the checkpoint's own template.

The template is looked up like transformers does: `chat_template.jinja` in the checkpoint directory, else the
`chat_template` entry of `tokenizer_config.json`, else the bundled Kimi-K2-Instruct template. It runs in
jinja2's ImmutableSandboxedEnvironment (with size bounds, `template_sandbox`) configured as HF's chat-template environment (trim_blocks,
lstrip_blocks, loop controls, a `tojson` that does not HTML-escape and keeps key order, `raise_exception`),
so a checkpoint's template renders here exactly as in `apply_chat_template`.

`render` gives the prompt text (what a person inspects). `encode_messages` gives the ids the model sees, and
lets only the template's own markers become control tokens (see `control_guard`).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext

from kimi_local.text.control_guard import ControlGuard
from kimi_local.text.files import CONFIG_FILE, TEMPLATE_FILE, builtin_template_text, read_json_object
from kimi_local.text.messages import normalize_messages, normalize_tools
from kimi_local.text.template_sandbox import BoundedSandbox, render_bounded
from kimi_local.text.tokenizer import KimiTokenizer

log = logging.getLogger(__name__)

BUILTIN_SOURCE = "<built-in kimi_k2.jinja>"


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def template_environment() -> BoundedSandbox:
    """A sandboxed jinja2 environment (with bounds on value sizes) and the settings and helpers of HF templates."""
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def find_template(path: Path, has_tools: bool = False) -> tuple[str, str]:
    """(template text, where it came from) for a checkpoint directory."""
    path = Path(path)
    jinja_file = path / TEMPLATE_FILE
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8"), str(jinja_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{jinja_file}: cannot read chat template: {exc}") from exc
    config_file = path / CONFIG_FILE
    template = read_json_object(config_file).get("chat_template") if config_file.is_file() else None
    if isinstance(template, list):  # HF's named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("tool_use") if has_tools and "tool_use" in named else named.get("default")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{config_file}: chat_template must be a string or a list of named templates")
    if template:
        return template, f"{config_file} (chat_template)"
    return builtin_template_text(), BUILTIN_SOURCE


class ChatFormat:
    """Renders OpenAI-style conversations with one template and encodes them with one tokenizer."""

    def __init__(self, tokenizer: KimiTokenizer, template: str | None = None, source: str = BUILTIN_SOURCE):
        self.tokenizer = tokenizer
        self.template_text = builtin_template_text() if template is None else template
        self.source = source
        try:
            self._template = template_environment().from_string(self.template_text)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"{source}: chat template does not compile (line {exc.lineno}): {exc.message}") from exc
        self._guard = ControlGuard(tokenizer.control_token_names)

    @classmethod
    def from_dir(cls, path: str | Path, tokenizer: KimiTokenizer | None = None) -> "ChatFormat":
        tokenizer = tokenizer or KimiTokenizer.from_dir(path)
        template, source = find_template(Path(path))
        log.debug("chat template from %s", source)
        return cls(tokenizer, template, source)

    def _render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        names = self.tokenizer.special.names
        eos = names[self.tokenizer.eos_id - self.tokenizer.num_base_tokens]
        bos = names[self.tokenizer.bos_id - self.tokenizer.num_base_tokens]
        try:
            return render_bounded(
                self._template, messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                bos_token=bos, eos_token=eos,
            )
        except jinja2.TemplateError as exc:  # raise_exception(), the sandbox's bounds
            raise ValueError(f"{self.source}: chat template failed: {exc}") from exc
        except (TypeError, ValueError, LookupError, ArithmeticError, RecursionError, MemoryError) as exc:
            # what a template's own code can raise otherwise (an include without a loader: TypeError)
            raise ValueError(f"{self.source}: chat template failed: {type(exc).__name__}: {exc}") from exc

    def render(self, messages: Any, tools: Any = None, add_generation_prompt: bool = True) -> str:
        """The prompt text, exactly as the template writes it."""
        return self._render(normalize_messages(messages), normalize_tools(tools), add_generation_prompt)

    def encode_messages(self, messages: Any, tools: Any = None, add_generation_prompt: bool = True) -> list[int]:
        """Prompt token ids; control-token text inside messages or tools is encoded as plain text."""
        messages = self._guard.protect(normalize_messages(messages))
        tools = self._guard.protect(normalize_tools(tools))
        rendered = self._render(messages, tools, add_generation_prompt)
        ids: list[int] = []
        for piece, is_control in self._guard.split(rendered):
            ids += [self.tokenizer.token_id(piece)] if is_control else self.tokenizer.encode(piece)
        return ids
