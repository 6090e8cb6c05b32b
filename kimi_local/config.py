"""The engine's configuration: one frozen dataclass tree, filled from `kimi-local.toml`, `KIMI_LOCAL_*`
environment variables and command-line flags (in that order of precedence, lowest first; `settings.py` does
the filling and remembers where each value came from).

Sections mirror the TOML file:

    model = "/models/Kimi-K2-Instruct"      # checkpoint directory; unset: the built-in demo model
    [engine]  device, dtype, threads, max_context, max_batch, prefill_chunk, gpu_memory_gb, expert_backend,
              cuda_graphs
    [cache]   ram_gb, gpu_gb, pinned, prefetch, io_threads, profile
    [server]  host, port, api_key, max_queue
    [tui]     system_prompt, temperature, top_p, max_tokens

The schema is the dataclasses themselves: every field carries a `Rule` in its metadata (help text, the flag that
overrides it, allowed choices, range, pattern). The same rule validates a value from the file, the environment,
a flag or a direct constructor call, so an error always names the key, and the caller adds where the value came
from. Values that mean "decide at load time" (threads 0, ram_gb 0, gpu_memory_gb 0, device auto) stay as
written; `sizing.py` resolves them against the machine and the checkpoint.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Iterator, Mapping


class SettingValueError(ValueError):
    """A configuration value outside its rule; the message names the key."""


@dataclass(frozen=True)
class Rule:
    help: str
    flag: str | None = None  # the command-line flag that overrides it (see settings.add_config_flags)
    choices: tuple[str, ...] = ()
    pattern: str | None = None  # full-match regex for a string (or for each item of a list)
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    non_empty: bool = False
    expected: str | None = None  # the rule in words, where the generic wording would be a regex


def setting(default: Any, help: str, **rules: Any) -> Any:
    return field(default=default, metadata={"rule": Rule(help=help, **rules)})


def describe(rule: Rule, kind: type) -> str:
    """The rule in words, for error messages and the commented config file."""
    if rule.expected:
        return rule.expected
    if rule.choices:
        return "one of " + ", ".join(rule.choices)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list of strings"}
    text = names[kind]
    lo, hi = rule.minimum, rule.maximum
    if lo is not None and hi is not None:
        text += f" in {'(' if rule.exclusive_minimum else '['}{lo:g}, {hi:g}]"
    elif lo is not None:
        text += f" {'>' if rule.exclusive_minimum else '>='} {lo:g}"
    if rule.pattern:
        text += f" matching {rule.pattern}"
    if rule.non_empty:
        text = "a non-empty string" if kind is str else text + " (not empty)"
    return text


def check_value(key: str, rule: Rule, kind: type, value: Any) -> Any:
    """`value` normalized to the field's type (int -> float, list -> tuple), or SettingValueError naming `key`."""

    def bad(why: str | None = None) -> SettingValueError:
        return SettingValueError(f"'{key}' = {value!r}: {why or 'must be ' + describe(rule, kind)}")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if not math.isfinite(value):
            raise bad("must be a finite number")
    elif kind is str:
        if not isinstance(value, str):
            raise bad()
        if rule.non_empty and not value.strip():
            raise bad("must not be empty")
    elif kind is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise bad()
        if not all(isinstance(item, str) for item in value):
            raise bad("every item must be a string")
        value = tuple(value)
    if kind in (int, float):
        lo, hi = rule.minimum, rule.maximum
        if lo is not None and (value < lo or (rule.exclusive_minimum and value == lo)):
            raise bad()
        if hi is not None and value > hi:
            raise bad()
    if rule.choices and value not in rule.choices:
        raise bad()
    if rule.pattern:
        for item in value if kind is tuple else (value,):
            if not re.fullmatch(rule.pattern, item):
                raise bad(f"item {item!r} is malformed; expected {describe(rule, kind)}" if kind is tuple else None)
    return value


class _Checked:
    """Validates every field on construction, so a hand-built section fails as loudly as a bad file."""

    def __post_init__(self) -> None:
        section = SECTION_NAMES.get(type(self), "")
        for f in fields(self):  # type: ignore[arg-type]
            kind = type(f.default)
            value = check_value(f"{section}.{f.name}", f.metadata["rule"], kind, getattr(self, f.name))
            object.__setattr__(self, f.name, value)


@dataclass(frozen=True)
class EngineSection(_Checked):
    device: str = setting("auto", "where the resident layers (attention, dense MLP, shared experts, embeddings) "
                          "and the KV cache live", flag="--device", pattern=r"auto|cpu|cuda(:\d+)?",
                          expected="auto, cpu, cuda or cuda:N")
    dtype: str = setting("auto", "compute dtype of the resident layers (auto: bfloat16 on CUDA, float32 on CPU)",
                         flag="--dtype", choices=("auto", "float32", "bfloat16", "float16"))
    threads: int = setting(0, "CPU threads for the routed-expert kernels (0: the physical core count)",
                           flag="--threads", minimum=0, maximum=4096)
    max_context: int = setting(8192, "KV cache length per sequence, in tokens (prompt + generated)",
                               flag="--max-context", minimum=1)
    max_batch: int = setting(4, "sequences decoded together (KV cache slots)", flag="--max-batch", minimum=1,
                             maximum=4096)
    prefill_chunk: int = setting(512, "prompt tokens per prefill step", flag="--prefill-chunk", minimum=1)
    gpu_memory_gb: float = setting(0.0, "GPU memory budget in GiB for resident layers, KV cache and "
                                   "the GPU expert tier (0: 90% of the GPU's free memory)",
                                   flag="--gpu-memory-gb", minimum=0)
    expert_backend: str = setting("auto", "what computes the routed experts (auto: numba)", flag="--expert-backend",
                                  choices=("auto", "numba", "torch"))
    cuda_graphs: bool = setting(True, "replay each layer's GPU part of a decode step (between two routed-expert "
                                "calls) as a CUDA graph; used when layers sit on CUDA", flag="--cuda-graphs")


@dataclass(frozen=True)
class CacheSection(_Checked):
    ram_gb: float = setting(0.0, "RAM expert-cache budget in GiB; 0: the biggest that leaves headroom, "
                            "decided at load time", flag="--ram-cache-gb", minimum=0)
    gpu_gb: float = setting(0.0, "GPU hot-expert tier budget in GiB (used only with a GPU; part of gpu_memory_gb)",
                            flag="--gpu-cache-gb", minimum=0)
    pinned: tuple[str, ...] = setting((), "routed experts that never leave RAM, as \"layer:expert\" pairs",
                                      flag="--pin", pattern=r"\d+:\d+",
                                      expected="a list of \"layer:expert\" strings such as \"1:17\"")
    prefetch: bool = setting(True, "predict the next layer's experts and read them ahead", flag="--prefetch")
    io_threads: int = setting(4, "concurrent expert reads from disk", flag="--io-threads", minimum=1, maximum=256)
    profile: bool = setting(True, "keep routing statistics per model for warm starts", flag="--profile")


@dataclass(frozen=True)
class ServerSection(_Checked):
    host: str = setting("127.0.0.1", "address the API server listens on", flag="--host", non_empty=True)
    port: int = setting(8000, "TCP port of the API server (0: any free port)", flag="--port", minimum=0,
                        maximum=65535)
    api_key: str = setting("", "key clients must send as a bearer token (empty: no key required)", flag="--api-key")
    max_queue: int = setting(64, "waiting requests before the server answers 429", flag="--max-queue", minimum=1)


@dataclass(frozen=True)
class TuiSection(_Checked):
    system_prompt: str = setting("You are Kimi, an AI assistant created by Moonshot AI.",
                                 "system prompt of a new chat", flag="--system-prompt")
    temperature: float = setting(0.6, "sampling temperature of the chat (0: greedy)", flag="--temperature",
                                 minimum=0, maximum=2)
    top_p: float = setting(1.0, "nucleus sampling mass of the chat", flag="--top-p", minimum=0, maximum=1,
                           exclusive_minimum=True)
    max_tokens: int = setting(1024, "most tokens per chat reply", flag="--max-tokens", minimum=1)


MODEL_RULE = Rule(help="checkpoint directory (a downloaded Kimi-K2, or any DeepSeek-V3-architecture block-fp8 "
                  "checkpoint); empty: the built-in demo model", flag="--model")


@dataclass(frozen=True)
class Config:
    model: str = ""
    engine: EngineSection = field(default_factory=EngineSection)
    cache: CacheSection = field(default_factory=CacheSection)
    server: ServerSection = field(default_factory=ServerSection)
    tui: TuiSection = field(default_factory=TuiSection)

    def __post_init__(self) -> None:
        check_value("model", MODEL_RULE, str, self.model)

    def get(self, key: str) -> Any:
        """A value by its dotted key ("engine.threads", "model")."""
        if key not in SPECS:
            raise KeyError(f"unknown setting '{key}'")
        spec = SPECS[key]
        return getattr(self if spec.section is None else getattr(self, spec.section), spec.name)


SECTIONS: Mapping[str, type] = MappingProxyType({"engine": EngineSection, "cache": CacheSection,
                                                "server": ServerSection, "tui": TuiSection})
SECTION_NAMES = MappingProxyType({cls: name for name, cls in SECTIONS.items()})


@dataclass(frozen=True)
class SettingSpec:
    """One configurable value: where it sits in the tree, its type, default and rule."""

    section: str | None  # None: top level (only `model`)
    name: str
    kind: type
    default: Any
    rule: Rule

    @property
    def key(self) -> str:
        return self.name if self.section is None else f"{self.section}.{self.name}"

    def check(self, value: Any) -> Any:
        return check_value(self.key, self.rule, self.kind, value)


def _specs() -> Iterator[SettingSpec]:
    yield SettingSpec(None, "model", str, "", MODEL_RULE)
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            yield SettingSpec(section, f.name, type(f.default), f.default, f.metadata["rule"])


SPECS: Mapping[str, SettingSpec] = MappingProxyType({spec.key: spec for spec in _specs()})  # in file order


def build_config(values: dict[str, Any]) -> Config:
    """A Config from dotted keys (missing keys keep their defaults); values are validated by their rules."""
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise SettingValueError(f"unknown setting '{unknown[0]}'")
    sections = {name: {} for name in SECTIONS}
    for key, value in values.items():
        spec = SPECS[key]
        if spec.section is not None:
            sections[spec.section][spec.name] = value
    return Config(model=values.get("model", ""),
                  **{name: SECTIONS[name](**kwargs) for name, kwargs in sections.items()})


def parse_pinned(entries: tuple[str, ...]) -> list[tuple[int, int]]:
    """`cache.pinned` as (layer, expert) pairs, in order, without duplicates."""
    out: list[tuple[int, int]] = []
    for entry in entries:
        layer, expert = (int(part) for part in entry.split(":"))
        if (layer, expert) not in out:
            out.append((layer, expert))
    return out
