"""Photo App: start the roles this process runs, in one Tornado IOLoop.

    python server.py                     every role, embedded defaults
    python server.py --role=web          only the HTTP tier
    python server.py --role=processor    only the upload consumer

main() is a chain of small steps: arguments -> config -> logging -> backends
-> consumers -> HTTP server -> wait for a signal -> shut down in reverse.
"""

import asyncio
import logging
import signal
import sys

import tornado.httpserver

from config import ConfigError, load_config
from consumers.roles import ROLES
from context import close_context, open_context
from handlers import log_request, make_app
from handlers.metrics import metrics_app
from handlers.upload import MULTIPART_OVERHEAD
from logs import setup_logging
from priority import (hand_over_the_interpreter_promptly, helper_executor,
                      preempt_for_the_ioloop)
from storage import StorageError

log = logging.getLogger("photo_app")


def start_consumers(context):
    consumers = [consumer(context) for role in context.config.roles
                 for consumer in ROLES.get(role, ())]
    for consumer in consumers:
        consumer.start()
    return consumers


def start_http(context):
    config = context.config
    server = tornado.httpserver.HTTPServer(
        make_app(context), max_body_size=config.max_upload_bytes + MULTIPART_OVERHEAD,
        idle_connection_timeout=60, body_timeout=config.body_timeout,
        xheaders=config.trust_proxy_headers)
    server.listen(config.port, config.address)
    log.info("web: listening on http://%s:%d/", config.address or "localhost", config.port)
    return server


def start_metrics(context):
    """/metrics on METRICS_PORT, for a process without the web role: a Tornado app on
    this process's IOLoop (a scrape awaits the broker's queue depths there)."""
    config = context.config
    server = tornado.httpserver.HTTPServer(metrics_app(context, log_request))
    server.listen(config.metrics_port, config.address)
    log.info("metrics: listening on http://%s:%d/metrics", config.address or "localhost",
             config.metrics_port)
    return server


async def drain_requests(context, deadline):
    """Let requests in progress be answered, until ``deadline`` (loop time), before
    their connections are closed (``close_all_connections`` alone would cut them
    off mid-upload)."""
    loop = asyncio.get_running_loop()
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
    # Blocking calls made for the IOLoop without an executor of their own (handing
    # work to the image workers, name lookups) run in threads below it too.
    asyncio.get_running_loop().set_default_executor(helper_executor("asyncio"))
    stop = shutdown_signal()
    context = await open_context(config)
    consumers = start_consumers(context)
    server = start_http(context) if "web" in config.roles else None
    metrics_server = (start_metrics(context) if server is None and config.metrics_port
                      else None)
    log.info("roles: %s", ", ".join(config.roles))

    signum = await stop
    log.info("%s: shutting down", signal.Signals(signum).name)
    if metrics_server is not None:
        metrics_server.stop()
    await stop_roles(context, server, consumers)
    await close_context(context)
    log.info("stopped")


async def stop_roles(context, server, consumers):
    """Stop taking work and finish what is in flight, all within one
    SHUTDOWN_TIMEOUT: first the HTTP listener and the requests in progress, then
    every consumer at once with the time that is left (what does not finish goes
    back to its queue)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + context.config.shutdown_timeout
    if server is not None:
        server.stop()
        await drain_requests(context, deadline)
    await asyncio.gather(*[consumer.stop(max(deadline - loop.time(), 0))
                           for consumer in consumers])
    if server is not None:
        try:  # closing the connections left takes a moment, even past the deadline
            await asyncio.wait_for(server.close_all_connections(),
                                   max(deadline - loop.time(), 1))
        except asyncio.TimeoutError:
            pass


def main(argv=None):
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print("photo-app: configuration error: %s" % exc, file=sys.stderr)
        sys.exit(2)
    setup_logging(config.log_format, config.log_level)
    hand_over_the_interpreter_promptly()
    preempt_for_the_ioloop()
    try:
        asyncio.run(serve(config))
    except StorageError as exc:
        log.error("the database is unavailable: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
