"""The in-process tier in front of Redis (cache.tiered): reads fill it and are
answered from it, its bytes stay within CACHE_MAX_BYTES, a delete anywhere
empties it of that image (also for a read that was in flight across the
delete), and a re-established event subscription clears it.  Real Redis,
RabbitMQ and PostgreSQL; a read in flight is held at a gate, never timed."""

import asyncio
import contextlib

import pytest

from broker import IMAGE_DELETED, Topology
from broker.memory import MemoryBroker
from cache import CachedImage, content_key, open_cache
from cache.memory import MemoryCache
from cache.redis import RedisCache
from cache.tiered import TieredCache
from handlers.images import cached_content, delete_image
from tests.conftest import REDIS_URL, free_port, make_config, start_context
from tests.helpers import eventually, store_images
from tests.test_cache import Proxy, url_for_port
from context import close_context
from tests.test_broker import _close_connection_named, _named_url, in_thread, require_rabbitmqctl


def entry(data):
    return CachedImage(data, "image/png", '"%s"' % len(data))


@pytest.fixture
def tiered(io_loop, redis_prefix):
    cache = TieredCache(MemoryCache(max_bytes=250), RedisCache(REDIS_URL, prefix=redis_prefix))
    yield cache
    io_loop.run_sync(cache.close)


@pytest.fixture
def services(request, tmp_path):
    """A configuration on PostgreSQL, RabbitMQ and Redis (with the in-process tier)."""
    return make_config(request, tmp_path, "postgres", "rabbitmq", "redis")


@contextlib.asynccontextmanager
async def web_processes(config, count):
    """``count`` contexts of the web role on one configuration, as separate web
    processes would have (each its own broker connection, subscription and tier)."""
    opened = []
    try:
        for _ in range(count):
            opened.append(await start_context(config))
        yield opened
    finally:
        for context in opened:
            await close_context(context)


# -- the two tiers --------------------------------------------------------------------

def test_redis_configured_opens_redis_behind_an_in_process_tier_of_cache_max_bytes(services):
    services.cache_max_bytes = 5 * 1024 * 1024
    cache = open_cache(services)
    assert isinstance(cache, TieredCache) and isinstance(cache.far, RedisCache)
    assert cache.near.max_bytes == 5 * 1024 * 1024
    assert "in-process tier of up to 5 MiB" in cache.describe()


@pytest.mark.gen_test
async def test_a_read_fills_the_tier_and_is_answered_from_it(tiered):
    await tiered.far.set("image:1", entry(b"from redis"))
    assert tiered.near.peek("image:1") is None
    assert (await tiered.lookup("image:1")) == (entry(b"from redis"), "hit")
    assert tiered.near.peek("image:1") == entry(b"from redis")  # the read filled it
    await tiered.far.delete("image:1")  # Redis no longer has it; this process does
    assert await tiered.get("image:1") == entry(b"from redis")


@pytest.mark.gen_test
async def test_the_tier_holds_at_most_its_bytes_and_redis_keeps_the_rest(tiered):
    for n in range(1, 5):
        await tiered.set("image:%d" % n, entry(bytes([n]) * 100))
        assert tiered.near.used <= 250
    assert tiered.near.used == 200
    assert [tiered.near.peek("image:%d" % n) is not None for n in range(1, 5)] == [
        False, False, True, True]
    for n in range(1, 5):  # every one still answered, the evicted ones from Redis
        assert (await tiered.get("image:%d" % n)).data == bytes([n]) * 100
        assert tiered.near.used <= 250
    await tiered.set("image:big", entry(b"x" * 251))  # larger than the tier: Redis only
    assert tiered.near.peek("image:big") is None
    assert (await tiered.far.get("image:big")).data == b"x" * 251


@pytest.mark.gen_test
async def test_a_deleted_key_is_never_stored_again_in_either_tier(tiered):
    await tiered.set("image:7", entry(b"seven"))
    await tiered.delete("image:7")
    assert await tiered.get("image:7") is None
    await tiered.set("image:7", entry(b"seven"))  # a read that loaded it before the delete
    assert tiered.near.peek("image:7") is None
    assert await tiered.far.get("image:7") is None
    await tiered.far.set("image:7", entry(b"seven"))  # a late read in another process
    assert await tiered.lookup("image:7") == (None, "miss")
    assert tiered.near.peek("image:7") is None


@pytest.mark.gen_test
async def test_clear_local_empties_the_tier_and_keeps_redis(tiered):
    await tiered.set("image:1", entry(b"one"))
    await tiered.set("image:2", entry(b"two"))
    assert tiered.clear_local() == 2
    assert tiered.near.used == 0 and tiered.near.peek("image:1") is None
    assert (await tiered.far.get("image:1")).data == b"one"


def cache_results(context, result):
    return context.metrics.registry.get_sample_value("photo_app_cache_requests_total",
                                                     {"result": result})


@pytest.mark.gen_test(timeout=60)
async def test_with_redis_down_the_tier_answers_what_it_holds_and_redis_comes_back(services):
    proxy = Proxy(free_port())  # Redis, behind a proxy this test stops and starts
    await proxy.start()
    services.cache_url = url_for_port(proxy.port)
    try:
        async with web_processes(services, 1) as (context,):
            held, unread, later = await store_images(context.storage, "outage", count=3)
            assert await cached_content(context, held) is not None
            await proxy.stop()
            assert await cached_content(context, held) is not None
            assert (cache_results(context, "hit"), cache_results(context, "error")) == (1, 0)
            assert await cached_content(context, unread) is not None  # from the database
            assert cache_results(context, "error") == 1
            await proxy.start()
            assert await cached_content(context, later) is not None
            assert (await context.cache.far.get(content_key(later))) is not None
    finally:
        if proxy._server is not None:
            await proxy.stop()


# -- deletes and reconnects, across web processes --------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_a_delete_in_another_process_empties_this_ones_tier(services):
    async with web_processes(services, 2) as (reader, deleter):
        [image_id] = await store_images(reader.storage, "tiers")
        key = content_key(image_id)
        assert await cached_content(reader, image_id) is not None
        assert reader.cache.near.peek(key) is not None
        await reader.cache.far.delete(key)  # from here on only the reader's tier has it
        assert await cached_content(reader, image_id) is not None
        heard = asyncio.Event()
        reader.events.listeners.append(
            lambda event: event.get("event") == IMAGE_DELETED and heard.set())

        assert await delete_image(deleter, image_id)
        await asyncio.wait_for(heard.wait(), 15)  # through RabbitMQ, to the reader's queue
        await eventually(lambda: reader.cache.near.peek(key) is None)
        assert await cached_content(reader, image_id) is None


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("source", ["database", "redis"])
async def test_a_read_in_flight_across_a_delete_leaves_nothing_cached(services, monkeypatch,
                                                                      source):
    """The reader loads the bytes (from the database, or from Redis) just before
    another process deletes the image, and is held there until its own process has
    handled the image.deleted event; what it then stores must go nowhere."""
    async with web_processes(services, 2) as (reader, deleter):
        [image_id] = await store_images(reader.storage, "racing")
        key = content_key(image_id)
        if source == "redis":
            assert await cached_content(reader, image_id) is not None  # into Redis
            reader.cache.clear_local()  # so the next read comes from Redis
            held, name = reader.cache.far, "lookup"
        else:
            held, name = reader.storage, "get_image_content"
        real = getattr(held, name)
        loaded, gate = asyncio.Event(), asyncio.Event()

        async def gated(*args):
            found = await real(*args)
            loaded.set()
            await gate.wait()
            return found
        monkeypatch.setattr(held, name, gated)
        heard = asyncio.Event()
        reader.events.listeners.append(
            lambda event: event.get("event") == IMAGE_DELETED and heard.set())

        reading = asyncio.ensure_future(cached_content(reader, image_id))
        await asyncio.wait_for(loaded.wait(), 10)
        assert await delete_image(deleter, image_id)
        await asyncio.wait_for(heard.wait(), 15)
        # forget_deleted (an earlier listener) has dropped the key in the reader's tier.
        assert reader.cache.near.deleted(key)
        gate.set()
        assert (await reading) is not None  # it had the bytes from before the delete
        assert reader.cache.near.peek(key) is None
        assert await reader.cache.far.get(key) is None
        assert await cached_content(reader, image_id) is None  # the next read: a 404


@pytest.mark.gen_test(timeout=90)
async def test_a_reconnect_clears_the_tier(services):
    require_rabbitmqctl()
    name = "pa-test-" + services.amqp_prefix.rstrip(".")
    services.amqp_url = _named_url(name)
    async with web_processes(services, 1) as (context,):
        [image_id] = await store_images(context.storage, "reconnect")
        key = content_key(image_id)
        assert await cached_content(context, image_id) is not None
        assert context.cache.near.peek(key) is not None
        broker = context.broker

        await in_thread(_close_connection_named, name)
        await eventually(lambda: not broker.connected.is_set(), timeout=10)
        await asyncio.wait_for(broker.connected.wait(), 30)  # subscribed again by now
        assert context.cache.near.peek(key) is None
        assert (await context.cache.far.get(key)) is not None  # Redis keeps it
        assert await cached_content(context, image_id) is not None
        assert context.cache.near.peek(key) is not None  # and it is filled again


@pytest.mark.gen_test
async def test_the_in_process_broker_says_a_subscription_is_in_place(tmp_path):
    broker = MemoryBroker(Topology("t."), str(tmp_path / "broker.db"))
    await broker.start()
    try:
        calls = []
        broker.subscribe(broker.topology.events_exchange, [IMAGE_DELETED], lambda m: None,
                         on_subscribed=lambda: calls.append(1))
        assert calls == [1]
    finally:
        await broker.close()
