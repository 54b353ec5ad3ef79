"""Shutdown keeps one deadline: SHUTDOWN_TIMEOUT covers the HTTP drain and every
consumer, and the consumers stop together, each with the time that is left."""

import asyncio
from types import SimpleNamespace

import pytest

import server as server_module
from config import Config
from tests.helpers import eventually

TIMEOUT = 30.0


class FakeServer:
    def __init__(self):
        self.stopped_at = None

    def stop(self):
        self.stopped_at = asyncio.get_running_loop().time()

    async def close_all_connections(self):
        pass


class FakeConsumer:
    """Records how much time it was given, and waits until every consumer's stop has
    begun: stops made one after another never get past the first."""

    def __init__(self, begun, everyone):
        self.begun, self.everyone = begun, everyone
        self.called_at = self.timeout = None

    async def stop(self, timeout):
        self.called_at, self.timeout = asyncio.get_running_loop().time(), timeout
        self.begun.append(self)
        if len(self.begun) == 2:
            self.everyone.set()
        await asyncio.wait_for(self.everyone.wait(), 5)


@pytest.mark.gen_test(timeout=20)
async def test_consumers_stop_together_within_what_the_drain_left():
    loop = asyncio.get_running_loop()
    request = object()
    context = SimpleNamespace(config=Config(shutdown_timeout=TIMEOUT), requests={request})
    web = FakeServer()
    begun, everyone = [], asyncio.Event()
    consumers = [FakeConsumer(begun, everyone), FakeConsumer(begun, everyone)]

    stopping = asyncio.ensure_future(server_module.stop_roles(context, web, consumers))
    await eventually(lambda: web.stopped_at is not None)
    await asyncio.sleep(0.3)  # the drain waits for the request in progress meanwhile
    assert begun == []
    released_at = loop.time()
    context.requests.discard(request)  # answered
    await stopping

    assert len(begun) == 2
    for consumer in consumers:
        assert consumer.called_at >= released_at
        # One deadline, set when the shutdown began: what the drain used is gone.
        assert consumer.timeout <= web.stopped_at + TIMEOUT - released_at + 1e-6
