"""Servers for the server tests, one of each per session, each a real uvicorn on a free loopback port:

- `real_server`: the tiny random-weight checkpoint on the real model and engine (8 KV slots, 512-token context);
- `scripted_server`: the same engine and server code over `ScriptedModel`, whose replies are scripted token
  sequences (exact text, Kimi tool-call sections).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from kimi_local.config import Config, EngineSection
from kimi_local.engine.engine import Engine
from kimi_local.engine.loader import load
from kimi_local.engine.service import EngineService
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.server.app import create_app
from kimi_local.server.runner import ServerThread, build_state
from kimi_local.server.state import ServerState
from kimi_local.text.chat import ChatFormat
from kimi_local.text.tokenizer import KimiTokenizer
from tests.server.scripted_model import ScriptedModel

MAX_CONTEXT = 512
MAX_BATCH = 8
MAX_QUEUE = 32

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog."
WEATHER_ARGS = {"city": "Paris"}
WEATHER_RESULT_REPLY = "It is sunny in Paris."
TOOL_PREAMBLE = "Let me check."
LONG_STORY = "Tell me a long story."
PREFILL = "The quick"  # a partial assistant turn the reply continues
PREFILL_CONTINUATION = " brown fox."
SCRIPTED_BATCH = 4


@dataclass
class Running:
    url: str
    state: ServerState
    thread: ServerThread

    @property
    def engine(self):
        return self.state.service.engine


def _start(state: ServerState):
    thread = ServerThread(create_app(state)).start()
    return Running(thread.url, state, thread)


@pytest.fixture(scope="session")
def real_server(tiny_checkpoint):
    config = Config(engine=EngineSection(expert_backend="torch", max_context=MAX_CONTEXT, max_batch=MAX_BATCH,
                                         prefill_chunk=256))
    loaded = load(tiny_checkpoint, config)
    running = _start(build_state(loaded, "kimi-tiny", max_queue=MAX_QUEUE))
    yield running
    running.thread.stop()
    running.state.close()


def tool_script(tokenizer: KimiTokenizer):
    """Replies by what the prompt asks: Kimi's tool-call tokens for weather questions, a fixed sentence else."""
    t = tokenizer.token_id
    end = t("<|im_end|>")
    args = tokenizer.encode(json.dumps(WEATHER_ARGS))
    call_tail = [t("<|tool_call_end|>"), t("<|tool_calls_section_end|>"), end]

    def script(prompt: str) -> list[int]:
        last_user = prompt.rsplit("<|im_user|>", 1)[-1]
        if prompt.endswith("<|tool_call_argument_begin|>"):  # tool_choice named a function
            return args + call_tail
        if prompt.endswith("<|tool_call_begin|>"):  # tool_choice "required"
            return tokenizer.encode("functions.get_weather:0") + [t("<|tool_call_argument_begin|>")] + args + call_tail
        last_turn = prompt.rsplit("<|im_assistant|>", 1)[0].rsplit("<|im_end|>", 1)[0].rsplit("<|im_middle|>", 1)[-1]
        if last_turn.startswith("## Return of functions.get_weather:0"):
            return tokenizer.encode(WEATHER_RESULT_REPLY) + [end]
        if prompt.endswith("<|im_middle|>" + PREFILL):
            return tokenizer.encode(PREFILL_CONTINUATION) + [end]
        if LONG_STORY in last_user:  # never ends by itself: only the token limit or a disconnect stops it
            return tokenizer.encode("la ") * MAX_CONTEXT
        if "weather" in last_user and "tool_declare" in prompt:
            return (tokenizer.encode(TOOL_PREAMBLE) + [t("<|tool_calls_section_begin|>"), t("<|tool_call_begin|>")]
                    + tokenizer.encode("functions.get_weather:0") + [t("<|tool_call_argument_begin|>")] + args
                    + call_tail)
        return tokenizer.encode(DEFAULT_REPLY) + [end]

    return script


@pytest.fixture(scope="session")
def scripted_server(tiny_checkpoint):
    tokenizer = KimiTokenizer.from_dir(tiny_checkpoint)
    model = ScriptedModel(Checkpoint.open(tiny_checkpoint).config, tokenizer, tool_script(tokenizer))
    engine = Engine(model, max_context=MAX_CONTEXT, max_batch=SCRIPTED_BATCH, prefill_chunk=MAX_CONTEXT)
    state = ServerState(EngineService(engine, max_queue=MAX_QUEUE), tokenizer,
                        ChatFormat.from_dir(tiny_checkpoint, tokenizer), "kimi-scripted")
    running = _start(state)
    yield running
    running.thread.stop()
    state.close()
