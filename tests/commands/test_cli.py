"""The command line as a whole: help for every command, --version, global --config, errors and -v."""

from __future__ import annotations

import argparse

import pytest

from kimi_local import __version__
from kimi_local.cli import build_parser, main


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kimi-local {__version__}"


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--config PATH" in out and "--verbose" in out
    for name in subcommands(build_parser()):
        assert name in out


def test_every_command_has_a_description_and_help(capsys):
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    for name, sub in subcommands(parser).items():
        assert helps.get(name), f"{name} has no one-line help"
        assert sub.description, f"{name} has no description"
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: kimi-local {name}")


def test_config_actions_have_help(capsys):
    for action in ("init", "show", "path"):
        with pytest.raises(SystemExit):
            main(["config", action, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: kimi-local config {action}")


def test_no_command_prints_help():
    assert main([]) == 2


def test_global_config_flag_reaches_the_command(capsys, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[engine]\nmax_batch = 3\n")
    assert main(["--config", str(path), "config", "show", "--json"]) == 0
    assert '"value": 3' in capsys.readouterr().out


def test_error_is_one_line_and_traceback_only_with_verbose(capsys, caplog, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nthreads = 'x'\n")
    assert main(["--config", str(bad), "config", "show"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(bad) in err
    assert not any(r.exc_info for r in caplog.records)
    assert main(["-v", "--config", str(bad), "config", "show"]) == 1
    assert any(r.exc_info for r in caplog.records)  # the traceback is logged (to stderr outside pytest)
