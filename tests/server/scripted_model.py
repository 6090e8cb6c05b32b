"""A stand-in for KimiModel whose logits make the real engine sample a scripted reply.

Only the transformer is replaced: the engine (scheduling, batching, sampling, stop ids, token limits), the
engine service and the whole server run for real. The script maps the prompt's token ids to the reply's
token ids; logits put all the mass on the next scripted token (0 against -1e4), so any temperature samples it.
After the script runs out the model says <|im_end|>. Every complete prompt is recorded in `prompts`. Like the
real model it remembers tokens only through the KV cache: each position's token id is written into its latent
row, so the engine's prefix reuse (rows a slot kept, or copied from another) reaches it as it reaches the model.
A prompt containing FAIL_MARKER makes the forward pass raise (an engine failure for that request).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from kimi_local.model.config import ModelConfig
from kimi_local.model.placement import Placement
from kimi_local.text.tokenizer import KimiTokenizer

FAIL_MARKER = "PLEASE-FAIL"


class ScriptedModel:
    def __init__(self, config: ModelConfig, tokenizer: KimiTokenizer, script: Callable[[str], list[int]],
                 step_delay: float = 0.0):
        self.config = config
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.placement = Placement.uniform(config.num_hidden_layers, self.device, self.dtype)
        self.routing_hooks: list = []
        self.tokenizer = tokenizer
        self.script = script  # prompt text (markers kept) -> reply ids
        self.step_delay = step_delay
        self.end_id = tokenizer.token_id("<|im_end|>")
        self._prompt_len: dict[int, int] = {}
        self._replies: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self.prompts: list[list[int]] = []

    def __call__(self, batch, cache, logits_rows=None) -> torch.Tensor:
        if self.step_delay:
            time.sleep(self.step_delay)
        rows_of_tokens = cache.kv[0]  # [slots, max_len, rank]: value 0 of a row holds that position's token id
        rows_of_tokens[batch.slots, batch.positions, 0] = batch.input_ids.to(rows_of_tokens.dtype)
        if batch.is_prefill:
            slot, end = int(batch.slots[0]), int(batch.positions[-1]) + 1
            prompt = rows_of_tokens[slot, :end, 0].long().tolist()
            self._prompt_len[slot] = end
            text = self.tokenizer.decode(prompt)
            if FAIL_MARKER in text:
                raise RuntimeError("scripted failure")
            self._replies[slot] = self.script(text)
            with self._lock:
                self.prompts.append(list(prompt))
            rows = [(slot, len(prompt))]
        else:
            rows = [(int(s), int(p) + 1) for s, p in zip(batch.slots, batch.positions)]
        logits = torch.full((len(rows), self.config.vocab_size), -1e4)
        for r, (slot, position) in enumerate(rows):
            reply = self._replies[slot]
            k = position - self._prompt_len[slot]
            logits[r, reply[k] if k < len(reply) else self.end_id] = 0.0
        return logits
