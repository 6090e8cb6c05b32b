"""One real server on the tiny checkpoint for the API-facing reliability tests (session-scoped: loading takes
a fraction of a second, but every test module that talks HTTP shares it); fault and memory tests build their
own, since they damage or measure theirs."""

from __future__ import annotations

import pytest

from tests.reliability.servers import Sizes, load_plain, serve


@pytest.fixture(scope="session")
def server(tiny_checkpoint):
    with serve(load_plain(tiny_checkpoint, Sizes())) as running:
        yield running
