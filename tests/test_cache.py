"""The read cache: the contract on the in-process LRU, on Redis and on Redis behind
an in-process tier (tests/test_cache_tier.py has more of that one), plus NoCache,
and how RedisCache behaves when Redis is down, slow, or comes back.

A cache fault must never become a request fault: it is a logged warning (once
per outage) and a miss, answered within the cache's short timeout.
"""

import asyncio
import logging
import urllib.parse

import pytest
import redis

from cache import CachedImage, NoCache, content_key
from cache.memory import MemoryCache
from cache.redis import RedisCache
from cache.tiered import TieredCache
from tests.conftest import REDIS_URL, free_port

# Byte sequences a separator-joined or text-decoded encoding would break.
PAYLOADS = {
    "every-byte": bytes(range(256)) * 16,
    "crlf": b"\r\n",
    "pipe": b"|",
    "nul": b"\x00",
    "mixed": b"a|b\r\nc\x00d\xff|\x00\r\n",
    "not-utf8": b"\xc3\x28\xa0\xa1\xf0\x28\x8c\xbc",
}


def entry(data=b"image bytes", mime_type="image/png", etag='"0123abcd"'):
    return CachedImage(data, mime_type, etag)


def url_for_port(port):
    """REDIS_URL with its port replaced (same database number)."""
    parts = urllib.parse.urlsplit(REDIS_URL)
    return urllib.parse.urlunsplit(parts._replace(netloc="127.0.0.1:%d" % port))


def redis_warnings(caplog):
    return [r for r in caplog.records
            if r.name == "cache.redis" and r.levelno == logging.WARNING]


def redis_infos(caplog, text="answers again"):
    return [r for r in caplog.records
            if r.name == "cache.redis" and r.levelno == logging.INFO and text in r.getMessage()]


# -- the contract on every backend ---------------------------------------------

@pytest.fixture(params=["memory", "redis", "tiered"])
def cache(request, io_loop):
    """A cache of each kind (Redis under this test's key prefix; "tiered": Redis behind
    an in-process tier, what REDIS_URL=redis://... opens), closed afterwards."""
    if request.param == "memory":
        store = MemoryCache(max_bytes=1024 * 1024)
    else:
        store = RedisCache(REDIS_URL, prefix=request.getfixturevalue("redis_prefix"))
        if request.param == "tiered":
            store = TieredCache(MemoryCache(max_bytes=1024 * 1024), store)
    yield store
    io_loop.run_sync(store.close)


@pytest.mark.gen_test
@pytest.mark.parametrize("data", list(PAYLOADS.values()), ids=list(PAYLOADS))
async def test_an_entry_comes_back_identical(cache, data):
    stored = entry(data, "image/webp", '"%s"' % ("e" * 64))
    await cache.set(7, stored)
    got = await cache.get(7)
    assert isinstance(got, CachedImage)
    assert type(got.data) is bytes
    assert got == stored


@pytest.mark.gen_test
async def test_a_miss_is_none_and_delete_removes(cache):
    assert await cache.get(1) is None
    await cache.set(1, entry(b"one"))
    await cache.set(2, entry(b"two"))
    await cache.delete(1)
    await cache.delete(999)  # deleting a miss is fine
    assert await cache.get(1) is None
    assert (await cache.get(2)).data == b"two"


@pytest.mark.gen_test
async def test_set_replaces_an_entry(cache):
    await cache.set(1, entry(b"old", "image/png", '"old"'))
    await cache.set(1, entry(b"new", "image/gif", '"new"'))
    assert await cache.get(1) == entry(b"new", "image/gif", '"new"')


@pytest.mark.gen_test
async def test_a_healthy_cache_answers_ping(cache):
    assert await cache.ping() is True


# -- MemoryCache ---------------------------------------------------------------

@pytest.mark.gen_test
async def test_memory_cache_evicts_the_least_recently_used():
    cache = MemoryCache(max_bytes=100)
    await cache.set(1, entry(b"a" * 40))
    await cache.set(2, entry(b"b" * 40))
    assert cache.used == 80
    await cache.get(1)  # 2 is now the least recently used
    await cache.set(3, entry(b"c" * 40))
    assert await cache.get(2) is None
    assert (await cache.get(1)).data == b"a" * 40
    assert (await cache.get(3)).data == b"c" * 40
    assert cache.used == 80

    await cache.set(1, entry(b"a" * 10))  # replacing counts the new size only
    assert cache.used == 50
    await cache.delete(3)
    assert cache.used == 10
    await cache.set(4, entry(b"d" * 100))  # exactly max_bytes fits, alone
    assert cache.used == 100
    assert await cache.get(1) is None
    assert (await cache.get(4)).data == b"d" * 100


@pytest.mark.gen_test
async def test_memory_cache_does_not_store_an_entry_larger_than_itself():
    cache = MemoryCache(max_bytes=100)
    await cache.set(1, entry(b"a" * 60))
    await cache.set(2, entry(b"b" * 101))
    assert await cache.get(2) is None
    assert (await cache.get(1)).data == b"a" * 60  # nothing evicted for it
    assert cache.used == 60


# -- RedisCache ----------------------------------------------------------------

@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    yield client
    client.close()


@pytest.mark.gen_test
async def test_redis_keys_expire_and_live_under_the_prefix(redis_prefix, redis_client):
    """A Redis without maxmemory must not grow for ever; the prefix keeps
    deployments (and test runs) apart."""
    cache = RedisCache(REDIS_URL, prefix=redis_prefix, ttl=600)
    try:
        await cache.set(content_key(5), entry())
        keys = [key.decode() for key in redis_client.scan_iter(match=redis_prefix + "*")]
        assert keys == [redis_prefix + "image:5"]
        assert 0 < redis_client.ttl(keys[0]) <= 600
    finally:
        await cache.close()


@pytest.mark.gen_test(timeout=10)
async def test_redis_down_is_a_quick_miss_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="cache.redis")
    cache = RedisCache(url_for_port(free_port()), prefix="unused:")
    try:  # a miss, not a hang (gen_test's timeout would end a hang)
        assert await cache.get(1) is None
        await cache.set(1, entry())
        await cache.delete(1)
        assert await cache.get(1) is None
        assert await cache.ping() is False
    finally:
        await cache.close()
    assert len(redis_warnings(caplog)) == 1, caplog.text


@pytest.mark.gen_test(timeout=10)
async def test_a_hung_redis_is_a_miss_within_the_timeout(caplog):
    """A Redis that accepts and never answers must not hang the request."""
    connections = []

    async def swallow(reader, writer):
        connections.append((writer, asyncio.current_task()))
        await reader.read()  # never answers; returns when the client hangs up

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    cache = RedisCache(url_for_port(server.sockets[0].getsockname()[1]), prefix="unused:",
                       timeout=0.2)
    try:  # misses, not a hang (gen_test's timeout would end a hang)
        assert await cache.get(1) is None
        await cache.set(1, entry())
        assert await cache.get(1) is None
        assert connections, "the cache never connected to the hung server"
    finally:
        await cache.close()
        server.close()
        for writer, _task in connections:
            writer.close()
        await asyncio.gather(*[task for _writer, task in connections])
        await server.wait_closed()
    assert len(redis_warnings(caplog)) == 1, caplog.text


class Proxy:
    """A TCP proxy to the real Redis on a fixed port, which the test stops (cutting
    live connections, as a Redis restart would) and starts again."""

    def __init__(self, port):
        target = urllib.parse.urlsplit(REDIS_URL)
        self.port = port
        self.target = (target.hostname, target.port or 6379)
        self._server = None
        self._writers = set()
        self._tasks = set()

    async def start(self):
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def stop(self):
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks)
        await self._server.wait_closed()
        self._server = None

    async def _forward(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._pipe_both_ways(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _pipe_both_ways(self, reader, writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair

        async def pipe(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= pair


@pytest.mark.gen_test(timeout=20)
async def test_redis_coming_back_is_used_again(redis_prefix, caplog):
    """No restart needed: the client that failed reconnects by itself, and each
    outage is announced once and its end once."""
    caplog.set_level(logging.INFO, logger="cache.redis")
    proxy = Proxy(free_port())
    cache = RedisCache(url_for_port(proxy.port), prefix=redis_prefix)
    try:
        # Down from the start: a miss and a warning.
        assert await cache.get(1) is None
        assert len(redis_warnings(caplog)) == 1

        await proxy.start()
        await cache.set(1, entry(b"kept"))
        assert (await cache.get(1)).data == b"kept"
        assert len(redis_infos(caplog)) == 1

        # Down again, with a connection open: a miss, and a warning for this outage.
        await proxy.stop()
        assert await cache.get(1) is None
        assert await cache.get(1) is None
        assert len(redis_warnings(caplog)) == 2

        await proxy.start()
        assert (await cache.get(1)).data == b"kept"
        assert await cache.ping() is True
        assert len(redis_infos(caplog)) == 2
        assert len(redis_warnings(caplog)) == 2
    finally:
        await cache.close()
        if proxy._server is not None:
            await proxy.stop()


# -- NoCache -------------------------------------------------------------------

@pytest.mark.gen_test
async def test_no_cache_always_misses_and_is_always_up():
    cache = NoCache()
    await cache.set(1, entry())
    assert await cache.get(1) is None
    await cache.delete(1)
    assert await cache.ping() is True
    await cache.close()
