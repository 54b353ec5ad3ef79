"""Fixtures: real services when they answer, one isolated namespace per test.

Each test gets its own SQLite file or PostgreSQL database, its own exchange and
queue name prefix on RabbitMQ, and its own Redis key prefix, all removed
afterwards.  A service that does not answer skips the tests that need it,
with the reason, unless REQUIRE_SERVICES=1, where it fails them.
"""

import asyncio
import itertools
import os
import sys
import uuid

import pika
import psycopg2
import pytest
import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import Config  # noqa: E402
from context import close_context, open_context  # noqa: E402
from handlers import make_app  # noqa: E402
from server import start_consumers  # noqa: E402
from tests.processes import free_port  # noqa: E402,F401  (tests import it from here)

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]
# Short waits between attempts, so retry paths finish within a test.
TEST_RETRY_DELAYS = (0.2, 0.5)
# The same for webhook and e-mail deliveries: four retries, five tries in all.
TEST_DELIVERY_DELAYS = (0.1, 0.1, 0.2, 0.2)
_counter = itertools.count(1)

# The stacks every route and consumer test runs on: (database, broker, cache).
STACKS = {
    "embedded": ("sqlite", "memory", "memory"),
    "services": ("postgres", "rabbitmq", "redis"),
    "mixed": ("sqlite", "rabbitmq", "none"),
    "mixed2": ("postgres", "memory", "redis"),
}


def unique_name():
    return "pa_test_%s_%d" % (RUN_ID, next(_counter))


def require(service, check):
    """Run ``check()``; skip (or fail, under REQUIRE_SERVICES=1) if it raises."""
    try:
        check()
    except Exception as exc:
        reason = "%s is not reachable: %s" % (service, exc)
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (REQUIRE_SERVICES=1)")
        pytest.skip(reason)


# -- per-service namespaces ----------------------------------------------------

def _pg_admin():
    conn = psycopg2.connect(PG_URL, connect_timeout=3)
    conn.autocommit = True
    return conn


@pytest.fixture
def postgres_url():
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    require("PostgreSQL", lambda: _pg_admin().close())
    name = unique_name()
    conn = _pg_admin()
    with conn.cursor() as cursor:
        cursor.execute("CREATE DATABASE %s" % name)
    conn.close()
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    conn = _pg_admin()
    with conn.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    conn.close()


def amqp_connection():
    return pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?socket_timeout=3"))


@pytest.fixture
def amqp_prefix():
    """A name prefix on RabbitMQ; its exchanges and queues are deleted afterwards."""
    require("RabbitMQ", lambda: amqp_connection().close())
    prefix = unique_name() + "."
    yield prefix
    from broker import Topology
    conn = amqp_connection()
    channel = conn.channel()
    for topology in (Topology(prefix),
                     Topology(prefix, TEST_RETRY_DELAYS, delivery_delays=TEST_DELIVERY_DELAYS)):
        for spec in topology.queues:
            channel.queue_delete(spec.name)
        for exchange in topology.exchanges:
            channel.exchange_delete(exchange)
    conn.close()


@pytest.fixture
def redis_prefix():
    """A Redis key prefix; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    require("Redis", client.ping)
    prefix = unique_name() + ":"
    yield prefix
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


# -- configurations and running apps -------------------------------------------

def make_config(request, tmp_path, database, broker, cache, **overrides):
    """A Config for the named backends, each in a namespace of this test's own."""
    config = Config(port=0, image_workers=2, db_pool_size=4, shutdown_timeout=5,
                    retry_delays=TEST_RETRY_DELAYS, max_attempts=3,
                    webhook_retry_delays=TEST_DELIVERY_DELAYS)
    if database == "postgres":
        config.database_url = request.getfixturevalue("postgres_url")
        config.broker_db_path = str(tmp_path / "broker.db")  # the in-process broker's queues
    else:
        config.database_url = "sqlite:///" + str(tmp_path / "photo-app.db")
    if broker == "rabbitmq":
        config.amqp_url = AMQP_URL
        config.amqp_prefix = request.getfixturevalue("amqp_prefix")
    if cache == "redis":
        config.cache_url = REDIS_URL
        config.cache_prefix = request.getfixturevalue("redis_prefix")
    else:
        config.cache_url = cache
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


async def start_context(config):
    """Open the backends and wait until the broker can take publishes."""
    context = await open_context(config)
    if config.broker_type == "rabbitmq":
        await asyncio.wait_for(context.broker.connected.wait(), 10)
    return context


@pytest.fixture(params=list(STACKS))
def stack(request):
    return request.param


@pytest.fixture
def config_overrides():
    """Override in a test module (or with @pytest.mark.parametrize) to change settings."""
    return {}


@pytest.fixture
def config(request, tmp_path, stack, config_overrides):
    """The app's image work runs in worker processes, as by default; a test marked
    ``image_threads`` runs it in threads of its own process (IMAGE_POOL=thread), where
    it can replace ``consumers.processor.process`` with a closure."""
    if request.node.get_closest_marker("image_threads"):
        config_overrides = dict(config_overrides, image_pool="thread")
    return make_config(request, tmp_path, *STACKS[stack], **config_overrides)


@pytest.fixture
def context(io_loop, config):
    """Open backends with every consumer running, closed after the test."""
    async def start():
        context = await start_context(config)
        return context, start_consumers(context)
    context, consumers = io_loop.run_sync(start)
    yield context

    async def close():
        for consumer in consumers:
            await consumer.stop(5)
        await close_context(context)
    io_loop.run_sync(close)


@pytest.fixture
def app(context):
    return make_app(context)


@pytest.fixture
def spawn(tmp_path):
    """``spawn(name, args, env, ready=(...))`` starts an app process (tests/processes.py)
    and waits until its log shows every text of ``ready``; ends them all at teardown.

    Tests list it after the service fixtures (postgres_url, amqp_prefix ...), so its
    processes are gone before their database, queues and keys are removed."""
    from tests.processes import READY_TIMEOUT, Proc
    started = []

    def start(name, args, env, ready=(), timeout=READY_TIMEOUT):
        proc = Proc(name, list(args), env, tmp_path)
        started.append(proc)
        if ready:
            proc.wait_for_log(*ready, timeout=timeout)
        return proc

    yield start
    for proc in reversed(started):
        proc.end()
