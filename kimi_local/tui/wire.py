"""The two text formats the remote backend reads: server-sent events and Prometheus metrics.

SSE (as OpenAI-compatible servers send chat completion streams): events are separated by a blank line, each
`data:` line adds a line to the event's data, lines starting with ':' are comments (keep-alives), other fields
(`event:`, `id:`, `retry:`) are not used here. The stream ends with the data `[DONE]`.

Prometheus text exposition: `name{label="value",...} number [timestamp]` per line, `#` lines are comments
(HELP/TYPE). Label values may contain escaped `\\"`, `\\\\` and `\\n`.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterable, Iterable, Iterator
from typing import AsyncIterator

DONE = "[DONE]"


class SSEDecoder:
    """Feed lines (without their line ending); get the data of each complete event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None

    def finish(self) -> str | None:
        """A last event the stream did not terminate with a blank line."""
        return self.feed("")


def sse_events(lines: Iterable[str]) -> Iterator[str]:
    decoder = SSEDecoder()
    for line in lines:
        data = decoder.feed(line)
        if data is not None:
            yield data
    data = decoder.finish()
    if data is not None:
        yield data


async def async_sse_events(lines: AsyncIterable[str]) -> AsyncIterator[str]:
    decoder = SSEDecoder()
    async for line in lines:
        data = decoder.feed(line)
        if data is not None:
            yield data
    data = decoder.finish()
    if data is not None:
        yield data


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

def _unescape(value: str) -> str:
    return re.sub(r'\\\\|\\"|\\n', lambda m: _ESCAPES[m[0]], value)


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{metric name: [(labels, value), ...]}; malformed lines are skipped."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, _, label_text, value_text = m.group(1), m.group(2), m.group(3), m.group(4)
        try:
            value = float(value_text)  # accepts NaN, +Inf, -Inf as Prometheus writes them
        except ValueError:
            continue
        labels = {}
        if label_text:
            pos = 0
            while pos < len(label_text):
                lm = _LABEL.match(label_text, pos)
                if lm is None or lm.end() == pos:
                    break
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
        out.setdefault(name, []).append((labels, value))
    return out


def single_value(metrics: dict, name: str, **labels: str) -> float | None:
    """The value of the sample of `name` with exactly these labels; None if absent or not finite."""
    for sample_labels, value in metrics.get(name, ()):
        if sample_labels == labels:
            return value if math.isfinite(value) else None
    return None
