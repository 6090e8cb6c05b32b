"""Server-sent events and Prometheus text, as the remote backend reads them."""

from __future__ import annotations

import asyncio
import math

from kimi_local.tui.wire import SSEDecoder, async_sse_events, parse_prometheus, single_value, sse_events


def test_sse_events():
    lines = [": keep-alive", "", "data: {\"a\": 1}", "", "event: x", "data: line1", "data:line2", "id: 3", "",
             "", "data: [DONE]"]
    assert list(sse_events(lines)) == ['{"a": 1}', "line1\nline2", "[DONE]"]  # the last one has no blank line


def test_async_sse_events():
    async def lines():
        for line in ["data: 1", "", "data: 2", ""]:
            yield line

    async def collect():
        return [d async for d in async_sse_events(lines())]

    assert asyncio.run(collect()) == ["1", "2"]


def test_sse_decoder_keeps_spaces_after_the_first():
    d = SSEDecoder()
    assert d.feed("data:   x ") is None
    assert d.feed("") == "  x "


def test_prometheus_parsing():
    text = "\n".join([
        "# HELP kimi_x a metric", "# TYPE kimi_x gauge",
        "kimi_x 1.5",
        'kimi_tier{tier="ram"} 1024',
        'kimi_tier{tier="gpu",extra="a \\"q\\" \\\\ b\\nc"} 2e3',
        "kimi_nan NaN", "kimi_inf +Inf",
        "kimi_ts 3 1700000000",
        "this is not a sample", "",
    ])
    m = parse_prometheus(text)
    assert single_value(m, "kimi_x") == 1.5
    assert single_value(m, "kimi_tier", tier="ram") == 1024
    assert single_value(m, "kimi_tier") is None  # exact label match only
    assert m["kimi_tier"][1][0] == {"tier": "gpu", "extra": 'a "q" \\ b\nc'}
    assert m["kimi_tier"][1][1] == 2000.0
    assert math.isnan(m["kimi_nan"][0][1]) and single_value(m, "kimi_nan") is None
    assert single_value(m, "kimi_inf") is None
    assert single_value(m, "kimi_ts") == 3
    assert single_value(m, "missing") is None
