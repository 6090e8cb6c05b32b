"""`kimi-local prompt`: the rendered prompt and ids, exactly what ChatFormat gives the server."""

from __future__ import annotations

import json
import re

import pytest

from kimi_local.cli import main
from kimi_local.text.chat import ChatFormat
from kimi_local.text.demo_tokenizer import write_demo_tokenizer

MESSAGES = [{"role": "user", "content": "What's the weather in 北京?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt_model")
    write_demo_tokenizer(path, 1024)
    return path


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_json_output_matches_chat_format(model_dir, tmp_path, capsys):
    code = main(["prompt", "--model", str(model_dir), "--messages", write(tmp_path, "m.json", MESSAGES),
                 "--tools", write(tmp_path, "t.json", TOOLS), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    chat = ChatFormat.from_dir(model_dir)
    assert out["prompt"] == chat.render(MESSAGES, TOOLS)
    assert out["token_ids"] == chat.encode_messages(MESSAGES, TOOLS)
    assert out["num_tokens"] == len(out["token_ids"]) and out["template"].endswith("chat_template.jinja")


def test_text_output_and_request_body(model_dir, tmp_path, capsys):
    body = {"model": "x", "messages": MESSAGES, "tools": TOOLS}
    code = main(["prompt", "--model", str(model_dir), "--messages", write(tmp_path, "body.json", body),
                 "--no-generation-prompt"])
    assert code == 0
    out = capsys.readouterr().out
    chat = ChatFormat.from_dir(model_dir)
    ids = chat.encode_messages(MESSAGES, TOOLS, add_generation_prompt=False)
    assert out.startswith(chat.render(MESSAGES, TOOLS, add_generation_prompt=False) + "\n")
    assert f"--- {len(ids)} tokens" in out
    assert out.strip().splitlines()[-1] == " ".join(map(str, ids))


@pytest.mark.parametrize(
    "files, message",
    [
        ({"m.json": "not json"}, "is not valid JSON"),
        ({"m.json": {"no": "messages"}}, "without a 'messages' list"),
        ({"m.json": [{"role": "robot", "content": "x"}]}, r"messages\[0\]\.role"),
        ({"m.json": MESSAGES, "t.json": {"x": 1}}, "without a 'tools' list"),
        ({}, "does not exist"),
    ],
)
def test_errors_are_one_clear_line(model_dir, tmp_path, capsys, files, message):
    args = ["prompt", "--model", str(model_dir), "--messages", str(tmp_path / "m.json")]
    for name, data in files.items():
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    if "t.json" in files:
        args += ["--tools", str(tmp_path / "t.json")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
