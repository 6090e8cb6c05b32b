"""Builds the effective `Config` for a command, remembering where every value came from.

Layers, lowest precedence first:

1. the defaults in `config.py`;
2. the TOML file: `--config PATH` (a global flag), else `$KIMI_LOCAL_CONFIG`, else `kimi-local.toml` in the user
   config directory (platformdirs). A missing default file is fine; a file named explicitly must exist;
3. environment variables `KIMI_LOCAL_<SECTION>_<FIELD>` (`KIMI_LOCAL_CACHE_RAM_GB=64`, `KIMI_LOCAL_MODEL=...`);
4. command-line flags, which a command adds with `add_config_flags(parser, sections)` (plus `--model`).

Every value passes the field's rule (config.py) on the way in. Unknown keys, unknown `KIMI_LOCAL_*` variables,
wrong types and out-of-range values are `SettingsError`s naming the key and the file, variable or flag.
`resolve_settings` returns the config with its sources (for `kimi-local config show`); `load_settings(args)`
returns just the config, for commands.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import platformdirs

from kimi_local.config import SECTIONS, SPECS, Config, SettingSpec, SettingValueError, build_config, describe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE_NAME = "kimi-local.toml"
ENV_PREFIX = "KIMI_LOCAL_"
CONFIG_ENV = "KIMI_LOCAL_CONFIG"
FLAG_DEST_PREFIX = "setting:"  # argparse dest of an override flag: "setting:engine.threads"
DEFAULT_SOURCE = "default"
DEFAULT_FLAG_SECTIONS = ("engine", "cache")


class SettingsError(ValueError):
    """A configuration problem; the message names the key and where the value came from."""


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("kimi-local")) / CONFIG_FILE_NAME


def env_var(key: str) -> str:
    """`cache.ram_gb` -> `KIMI_LOCAL_CACHE_RAM_GB`."""
    return ENV_PREFIX + key.replace(".", "_").upper()


ENV_ALIASES = MappingProxyType({"KIMI_LOCAL_API_KEY": "server.api_key"})  # short names serve documents
ENV_KEYS = MappingProxyType({**ENV_ALIASES, **{env_var(key): key for key in SPECS}})


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    chosen_by: str  # "--config", "$KIMI_LOCAL_CONFIG" or "default location"
    exists: bool


def config_target(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The config file this run uses, and what chose it: --config PATH, else $KIMI_LOCAL_CONFIG, else the default."""
    env = os.environ if env is None else env
    flag = getattr(args, "config_path", None)
    if flag:
        return Path(flag).expanduser(), "--config"
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser(), f"${CONFIG_ENV}"
    return default_config_path(), "default location"


def locate_config(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> ConfigFile:
    """`config_target`, which must exist unless it is the default location."""
    path, chosen_by = config_target(args, env)
    if path.is_dir():
        raise SettingsError(f"{path}: is a directory, not a config file ({chosen_by})")
    exists = path.is_file()
    if not exists and chosen_by != "default location":
        raise SettingsError(f"{path}: config file not found ({chosen_by})")
    return ConfigFile(path, chosen_by, exists)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_config_file(path: Path) -> dict[str, Any]:
    """Validated values by dotted key, as written in `path` (a relative model path is taken from the file's folder)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read config file ({exc})") from None
    values: dict[str, Any] = {}
    for name, item in raw.items():
        if name in SECTIONS:
            if not isinstance(item, dict):
                raise SettingsError(f"{path}: '{name}' must be a table ([{name}]), got {item!r}")
            fields_here = [key.split(".", 1)[1] for key in SPECS if key.startswith(name + ".")]
            for field_name, value in item.items():
                key = f"{name}.{field_name}"
                if key not in SPECS:
                    raise SettingsError(f"{path}: unknown key '{key}'{_suggest(field_name, fields_here)}")
                values[key] = _checked(SPECS[key], value, str(path))
        elif name in SPECS:
            values[name] = _checked(SPECS[name], item, str(path))
        else:
            top_level = [*SECTIONS, *(k for k in SPECS if "." not in k)]
            raise SettingsError(f"{path}: unknown key '{name}'{_suggest(name, top_level)}")
    model = values.get("model")
    if model and not Path(model).expanduser().is_absolute():
        values["model"] = str((path.parent / model).resolve())
    return values


def _checked(spec: SettingSpec, value: Any, where: str) -> Any:
    try:
        return spec.check(value)
    except SettingValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_text(spec: SettingSpec, text: str) -> Any:
    """A value from an environment variable or a flag (strings), checked by the field's rule."""
    expected = describe(spec.rule, spec.kind)
    if spec.kind is bool:
        word = text.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise SettingValueError(f"'{spec.key}' = {text!r}: must be one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
        return word in TRUE_WORDS
    if spec.kind in (int, float):
        try:
            value: Any = spec.kind(text.strip())
        except ValueError:
            raise SettingValueError(f"'{spec.key}' = {text!r}: must be {expected}") from None
        return spec.check(value)
    if spec.kind is tuple:
        return spec.check([item.strip() for item in text.split(",") if item.strip()])
    return spec.check(text)


def read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """(value, variable) by dotted key from `KIMI_LOCAL_*` variables; unknown variables are errors."""
    out: dict[str, tuple[Any, str]] = {}
    canonical_last = sorted(env.items(), key=lambda item: item[0] not in ENV_ALIASES)  # the full name wins
    for var, text in canonical_last:
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        key = ENV_KEYS.get(var)
        if key is None:
            raise SettingsError(f"environment variable {var}: unknown setting{_suggest(var, [*ENV_KEYS, CONFIG_ENV])}")
        try:
            out[key] = (parse_text(SPECS[key], text), var)
        except SettingValueError as exc:
            raise SettingsError(f"environment variable {var}: {exc}") from None
    return out


def read_flags(args: argparse.Namespace | None) -> dict[str, tuple[Any, str]]:
    """(value, flag) by dotted key for the override flags given on this command line (and --model)."""
    out: dict[str, tuple[Any, str]] = {}
    if args is None:
        return out
    for dest, value in vars(args).items():
        if dest.startswith(FLAG_DEST_PREFIX) and value is not None:
            spec = SPECS[dest[len(FLAG_DEST_PREFIX):]]
            flag = spec.rule.flag or ""
            if spec.kind is tuple:
                value = tuple(item for chunk in value for item in chunk)
            elif spec.kind is bool and not value:
                flag = "--no-" + flag[2:]
            out[spec.key] = (value, flag)
    if getattr(args, "model", None):
        out["model"] = (SPECS["model"].check(str(args.model)), "--model")
    return out


@dataclass(frozen=True)
class Settings:
    config: Config
    sources: Mapping[str, str]  # dotted key -> "default" | config file path | "env VAR" | "flag --x"
    file: ConfigFile

    def source(self, key: str) -> str:
        return self.sources[key]


def resolve_settings(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None,
                     check_model: bool = False) -> Settings:
    """Defaults < file < environment < flags. `check_model`: the configured model directory must exist."""
    env = os.environ if env is None else env
    file = locate_config(args, env)
    values: dict[str, Any] = {}
    sources = {key: DEFAULT_SOURCE for key in SPECS}
    if file.exists:
        for key, value in read_config_file(file.path).items():
            values[key], sources[key] = value, str(file.path)
    for key, (value, var) in read_env(env).items():
        values[key], sources[key] = value, f"env {var}"
    for key, (value, flag) in read_flags(args).items():
        values[key], sources[key] = value, f"flag {flag}"
    try:
        config = build_config(values)
    except SettingValueError as exc:  # unreachable for checked values; kept so a bug still names its key
        raise SettingsError(str(exc)) from None
    _check_combinations(config, sources)
    if check_model and config.model and not Path(config.model).expanduser().is_dir():
        raise SettingsError(f"{sources['model']}: model = '{config.model}': no such checkpoint directory")
    return Settings(config, sources, file)


def _check_combinations(config: Config, sources: Mapping[str, str]) -> None:
    budget, tier = config.engine.gpu_memory_gb, config.cache.gpu_gb
    if budget and tier > budget:
        raise SettingsError(
            f"'cache.gpu_gb' = {tier:g} ({sources['cache.gpu_gb']}) must fit in 'engine.gpu_memory_gb' = {budget:g} "
            f"({sources['engine.gpu_memory_gb']}): the GPU expert tier is part of the GPU budget")


def load_settings(args: argparse.Namespace) -> Config:
    return resolve_settings(args, check_model=True).config


def _flag_type(spec: SettingSpec):
    def convert(text: str) -> Any:
        try:
            return parse_text(spec, text)
        except SettingValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = spec.kind.__name__  # argparse names the type in its "invalid value" message
    return convert


def add_config_flags(parser: argparse.ArgumentParser, sections: Iterable[str] = DEFAULT_FLAG_SECTIONS,
                     exclude: Iterable[str] = ()) -> argparse._ArgumentGroup:
    """Adds the override flags of `sections` (engine, cache, server, tui) to a command, in one group.

    Each flag overrides the same key of the config file and the environment for this run, e.g. --ram-cache-gb,
    --threads, --device, --max-context, --host, --port, --api-key; `load_settings(args)` reads them. `exclude`:
    dotted keys whose flag the command defines itself (e.g. "tui.temperature")."""
    sections = tuple(sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown config section '{unknown[0]}'; expected some of {', '.join(SECTIONS)}")
    skip = set(exclude)
    group = parser.add_argument_group(
        "configuration overrides", f"override kimi-local.toml and {ENV_PREFIX}* for this run (sections: "
        f"{', '.join(sections)})")
    for spec in SPECS.values():
        if spec.section not in sections or spec.key in skip or not spec.rule.flag:
            continue
        dest = FLAG_DEST_PREFIX + spec.key
        help_text = f"{spec.rule.help} [{spec.key}]".replace("%", "%%")
        if spec.kind is bool:
            group.add_argument(spec.rule.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif spec.kind is tuple:
            group.add_argument(spec.rule.flag, dest=dest, action="append", default=None, type=_flag_type(spec),
                               metavar="L:E", help=help_text + "; repeatable; replaces the configured list")
        else:
            metavar = "|".join(spec.rule.choices) if spec.rule.choices else spec.name.upper()
            group.add_argument(spec.rule.flag, dest=dest, default=None, type=_flag_type(spec), metavar=metavar,
                               help=help_text)
    return group
