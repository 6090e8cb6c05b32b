import asyncio
import time

import pytest

from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.engine.service import EngineService, QueueFullError
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts

GREEDY = SamplingParams(temperature=0, max_new_tokens=6)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    return KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))


@pytest.fixture
def service(model):
    svc = EngineService(Engine(model, 64, max_batch=4), max_queue=8)
    yield svc
    svc.close()


def test_thread_and_async_streams_give_the_engine_tokens(model, service):
    expected = list(Engine(model, 64, 1).generate([1, 2, 3], GREEDY))
    assert [o.token_id for o in service.submit([1, 2, 3], GREEDY)] == expected

    async def many():
        loop = asyncio.get_running_loop()

        async def one():
            return [o.token_id async for o in service.submit([1, 2, 3], GREEDY, loop)]

        return await asyncio.gather(*(one() for _ in range(6)))

    assert asyncio.run(many()) == [expected] * 6
    stats = service.stats()
    assert stats.finished_requests == 7 and stats.generated_tokens == 42 and stats.running == 0


def test_closing_a_stream_cancels_the_request(service):
    stream = service.submit([1, 2, 3], SamplingParams(max_new_tokens=10_000))
    it = iter(stream)
    next(it)
    stream.close()
    deadline = time.time() + 10
    while service.engine.has_work() and time.time() < deadline:
        time.sleep(0.01)
    assert service.engine.num_running == 0


def test_bounded_queue(model):
    svc = EngineService(Engine(model, 64, max_batch=1), max_queue=0)
    try:
        with pytest.raises(QueueFullError):
            svc.submit([1, 2], GREEDY)
    finally:
        svc.close()
