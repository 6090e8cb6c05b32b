import threading

import pytest

from kimi_local.cache.read_queue import ReadQueue


class Gate:
    """Lets a test hold the single I/O thread inside a job until it opens."""

    def __init__(self):
        self.entered = threading.Event()
        self.opened = threading.Event()


def job(log: list, name: str, chunks: int = 1, gate: Gate | None = None):
    for i in range(chunks):
        if gate is not None and i == 0:
            gate.entered.set()
            assert gate.opened.wait(5)
        log.append((name, i))
        if i + 1 < chunks:
            yield
    return name


def test_runs_in_priority_order_and_returns_results():
    q = ReadQueue(1)
    log, gate = [], Gate()
    first = q.submit((5,), job(log, "blocker", gate=gate))
    assert gate.entered.wait(5)
    futures = {name: q.submit(prio, job(log, name)) for name, prio in
               (("prefetch-2", (1, 2)), ("demand", (0, 1)), ("prefetch-1", (1, 1)))}
    gate.opened.set()
    assert [f.result(5) for f in futures.values()] == ["prefetch-2", "demand", "prefetch-1"]
    assert first.result(5) == "blocker"
    assert [name for name, _ in log] == ["blocker", "demand", "prefetch-1", "prefetch-2"]
    q.shutdown()


def test_a_running_read_is_preempted_between_chunks():
    q = ReadQueue(1)
    log, gate = [], Gate()
    long = q.submit((1, 0), job(log, "prefetch", chunks=3, gate=gate))
    assert gate.entered.wait(5)
    urgent = q.submit((0, 0), job(log, "demand"))
    gate.opened.set()
    assert urgent.result(5) == "demand" and long.result(5) == "prefetch"
    assert log == [("prefetch", 0), ("demand", 0), ("prefetch", 1), ("prefetch", 2)]
    q.shutdown()


def test_promote_and_cancel():
    q = ReadQueue(1)
    log, gate = [], Gate()
    q.submit((0,), job(log, "blocker", gate=gate))
    assert gate.entered.wait(5)
    a = q.submit((3,), job(log, "a"))
    b = q.submit((2,), job(log, "b"))
    c = q.submit((4,), job(log, "c"))
    assert q.promote(a, (1,))  # a is needed now: ahead of b
    assert q.promote(b, (9,))  # a later priority leaves it where it is
    assert q.cancel(c) and c.cancelled() and q.queued() == 2
    gate.opened.set()
    assert a.result(5) == "a" and b.result(5) == "b"
    assert [name for name, _ in log] == ["blocker", "a", "b"]
    assert not q.cancel(a) and not q.promote(a, (0,))  # finished
    q.shutdown()


def test_a_started_read_cannot_be_cancelled_and_errors_reach_the_waiter():
    q = ReadQueue(1)
    gate = Gate()

    def failing():
        gate.entered.set()
        assert gate.opened.wait(5)
        yield
        raise OSError(5, "Input/output error")

    f = q.submit((0,), failing())
    assert gate.entered.wait(5)
    assert not q.cancel(f)
    gate.opened.set()
    with pytest.raises(OSError, match="Input/output"):
        f.result(5)
    q.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        q.submit((0,), job([], "late"))
    with pytest.raises(ValueError, match="num_threads"):
        ReadQueue(0)
