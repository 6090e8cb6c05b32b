"""One choice's engine outputs turned into text: detokenize, drop stop tokens, cut at stop strings.

The engine yields token ids; this is where every front end makes text of them (the server's choices, the
TUI's local replies), so they all show the same text for the same tokens. Tokens are detokenized
incrementally (never half a UTF-8 character), special tokens such as <|im_end|> are not shown, and stop
strings are matched with a holdback buffer (see `stop_strings`). The tool-call markers are not special
tokens, so they stay in the text for the tool-call parser that the chat layer runs on top.

Each `feed` returns a `ChoiceEvent` with the newly certain text, the tokens it came from (for logprobs) and,
on the last one, why the choice ended: "stop" (stop token or stop string), "length", "abort" or "error".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kimi_local.text.stop_strings import StopStringMatcher
from kimi_local.text.tokenizer import KimiTokenizer

if TYPE_CHECKING:  # the text package reads the engine's outputs but does not depend on the engine
    from kimi_local.engine.engine import StepOutput
    from kimi_local.engine.sampling import TokenLogprobs


@dataclass(frozen=True)
class SampledToken:
    token_id: int
    logprobs: TokenLogprobs | None


@dataclass
class ChoiceEvent:
    index: int
    text: str = ""
    tokens: list[SampledToken] = field(default_factory=list)
    finish_reason: str | None = None
    stop_string: str | None = None  # the stop string that ended the choice
    error: str | None = None

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


class ChoiceText:
    def __init__(self, index: int, tokenizer: KimiTokenizer, stop_ids: frozenset[int], stop_strings: list[str]):
        self.index = index
        self.stop_ids = stop_ids
        self._decoder = tokenizer.incremental_decoder(skip_special=True)
        self._stops = StopStringMatcher(stop_strings)
        self.num_tokens = 0  # every sampled token, stop token included (what usage counts)
        self.cached_prompt_tokens = 0  # prompt tokens the engine reused rather than computed (on the first token)
        self.finish_reason: str | None = None

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self, out: StepOutput) -> ChoiceEvent:
        if self.is_finished:
            return ChoiceEvent(self.index)
        event = ChoiceEvent(self.index)
        text = ""
        if out.cached_prompt_tokens is not None:
            self.cached_prompt_tokens = out.cached_prompt_tokens
        if out.token_id is not None:
            self.num_tokens += 1
            if out.token_id not in self.stop_ids:
                text = self._decoder.feed(out.token_id)
                event.tokens.append(SampledToken(out.token_id, out.logprobs))
        match = self._stops.feed(text)
        event.text = match.text
        if match.matched is None and out.finish_reason is not None:
            match = self._stops.feed(self._decoder.flush())  # a dangling partial character, as U+FFFD
            event.text += match.text if match.matched else match.text + self._stops.flush()
        if match.matched is not None:
            event.finish_reason, event.stop_string = "stop", match.matched
        elif out.finish_reason is not None:
            event.finish_reason, event.error = out.finish_reason, out.error
        self.finish_reason = event.finish_reason
        return event
