"""Photo App: start the roles this process runs, in one Tornado IOLoop.

    python server.py                     every role, embedded defaults
    python server.py --role=web          only the HTTP tier
    python server.py --role=processor    only the upload consumer

main() is a chain of small steps: arguments -> config -> logging -> backends
-> consumers -> HTTP server -> wait for a signal -> shut down in reverse.
"""

import asyncio
import logging
import os
import signal
import sys

import tornado.httpserver

from config import ConfigError, load_config
from consumers.dead_letters import DeadLetterRecorder
from consumers.deliveries import SENDERS
from consumers.notifier import Notifier
from consumers.processor import Processor
from context import close_context, open_context
from handlers import make_app
from handlers.upload import MULTIPART_OVERHEAD
from storage import StorageError

log = logging.getLogger("photo_app")

# The consumers each role runs.
CONSUMERS = {"processor": [Processor, DeadLetterRecorder], "notifier": [Notifier, *SENDERS]}


def setup_logging():
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)


def start_consumers(context):
    consumers = [consumer(context) for role in context.config.roles
                 for consumer in CONSUMERS.get(role, [])]
    for consumer in consumers:
        consumer.start()
    return consumers


def start_http(context):
    config = context.config
    server = tornado.httpserver.HTTPServer(
        make_app(context), max_body_size=config.max_upload_bytes + MULTIPART_OVERHEAD,
        idle_connection_timeout=60, body_timeout=config.body_timeout)
    server.listen(config.port, config.address)
    log.info("web: listening on http://%s:%d/", config.address or "localhost", config.port)
    return server


async def drain_requests(context, timeout):
    """Let requests in progress be answered before their connections are closed
    (``close_all_connections`` alone would cut them off mid-upload)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while context.requests and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if context.requests:
        log.warning("web: %d request(s) still in progress; closing them", len(context.requests))


def shutdown_signal():
    """A future set by the first SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda s=signum: stop.done() or stop.set_result(s))
    return stop


async def serve(config):
    stop = shutdown_signal()
    context = await open_context(config)
    consumers = start_consumers(context)
    server = start_http(context) if "web" in config.roles else None
    log.info("roles: %s", ", ".join(config.roles))

    signum = await stop
    log.info("%s: shutting down", signal.Signals(signum).name)
    if server is not None:
        server.stop()
        await drain_requests(context, config.shutdown_timeout)
    for consumer in consumers:
        await consumer.stop(config.shutdown_timeout)
    if server is not None:
        try:
            await asyncio.wait_for(server.close_all_connections(), 5)
        except asyncio.TimeoutError:
            pass
    await close_context(context)
    log.info("stopped")


def main(argv=None):
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print("photo-app: configuration error: %s" % exc, file=sys.stderr)
        sys.exit(2)
    setup_logging()
    try:
        asyncio.run(serve(config))
    except StorageError as exc:
        log.error("the database is unavailable: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
