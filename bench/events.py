"""Live updates: how many events one web process fans out to its sockets, and how long
an upload's event takes from ``stored`` to a socket.

    .venv/bin/python bench/events.py                      # 100 sockets, 2000 events, 40 uploads
    .venv/bin/python bench/events.py --sockets 200 --events 5000

A web process (``server.py --role=web``) runs against RabbitMQ and PostgreSQL, with
a processor beside it.  The bench opens ``--sockets`` WebSockets on /api/events.

1. Fan-out: it publishes ``--events`` events straight to the ``photo-app`` exchange
   (pika, as any AMQP client may) in batches of ``--batch``, each once every socket
   has the one before (a client that falls 256 frames behind is dropped by design,
   and the bench's own readers share the machine), and times the first publish to
   the last frame on the last socket: events per second delivered to every socket,
   and frames per second written in all.
2. Latency: it uploads ``--uploads`` photos one at a time, and for each compares the
   moment every socket has its ``image.uploaded`` with the upload's ``updated_at``
   (the commit that made it ``stored``; same machine, same clock): p50 and p99.

It prints figures and never fails on a time.
"""

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from common import report  # (importing common puts the repository on the import path)
import pika
import psycopg2
import tornado.websocket

from broker import Topology
from tests.helpers import make_image
from tests.processes import (RABBIT_READY, Proc, free_port, process_env, upload,
                             upload_status)

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def open_sockets(port, count):
    url = "ws://127.0.0.1:%d/api/events" % port
    return await asyncio.gather(*[tornado.websocket.websocket_connect(url)
                                  for _ in range(count)])


async def read_until(socket, want):
    """Read frames until ``want(event)`` is true for one; returns the moment it arrived."""
    while True:
        text = await socket.read_message()
        if text is None:
            raise RuntimeError("a socket closed")
        if want(json.loads(text)):
            return time.time()


def publish_events(prefix, numbers):
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    exchange = Topology(prefix).events_exchange
    for n in numbers:
        body = json.dumps({"event": "image.processing", "request_id": "bench-%d" % n,
                           "image_id": None, "nickname": "bench"}).encode()
        channel.basic_publish(exchange, "image.processing", body,
                              pika.BasicProperties(message_id="image.processing:bench-%d" % n))
    connection.close()


async def fan_out(port, prefix, sockets, events, batch):
    loop = asyncio.get_running_loop()
    started = time.time()
    for first in range(0, events, batch):
        numbers = range(first, min(first + batch, events))
        last = "bench-%d" % numbers[-1]
        readers = [asyncio.ensure_future(read_until(s, lambda e: e.get("request_id") == last))
                   for s in sockets]
        await loop.run_in_executor(None, publish_events, prefix, numbers)
        finished = max(await asyncio.gather(*readers))
    return started, finished


async def latencies(port, sockets, uploads):
    loop = asyncio.get_running_loop()
    found = []
    for n in range(uploads):
        data = make_image("PNG", size=(48, 32), color=(n % 256, 90, 160))
        code, body = await loop.run_in_executor(None, upload, port, data, "latency")
        assert code == 202, body
        request_id = body["request_id"]
        arrivals = await asyncio.gather(*[read_until(s, lambda e, r=request_id: (
            e.get("request_id") == r and e.get("event") == "image.uploaded")) for s in sockets])
        status = await loop.run_in_executor(None, upload_status, port, request_id)
        stored = datetime.fromisoformat(status["updated_at"]).timestamp()
        found.append((min(arrivals) - stored, max(arrivals) - stored))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--report", default=None, metavar="FILE",
                        help="append the headline figures to FILE (bench/all.py)")
    args = parser.parse_args()

    name = "photo_bench_%s" % uuid.uuid4().hex[:8]
    admin = psycopg2.connect(PG_URL)
    admin.autocommit = True
    admin.cursor().execute("CREATE DATABASE %s" % name)
    database_url = PG_URL.rsplit("/", 1)[0] + "/" + name
    prefix = name + "."
    directory = Path(tempfile.mkdtemp(prefix="photo-bench-"))
    port = free_port()
    env = process_env(DATABASE_URL=database_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=prefix,
                      CACHE="none", LOG_LEVEL="WARNING")
    procs = []
    try:
        web = Proc("web", ["server.py", "--role=web", "--port", str(port)], env, directory)
        procs.append(web)
        web.wait_ready(port)
        procs.append(Proc("processor", ["-m", "consumers.processor"],
                          dict(env, LOG_LEVEL="INFO"), directory))
        procs[-1].wait_for_log(*RABBIT_READY)

        async def run():
            sockets = await open_sockets(port, args.sockets)
            started, finished = await fan_out(port, prefix, sockets, args.events, args.batch)
            found = await latencies(port, sockets, args.uploads)
            for socket in sockets:
                socket.close()
            return started, finished, found
        started, finished, found = asyncio.run(run())
    finally:
        for proc in procs:
            proc.end()
        admin.cursor().execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        admin.close()
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        topology = Topology(prefix)
        for spec in topology.queues:
            channel.queue_delete(spec.name)
        for exchange in topology.exchanges:
            channel.exchange_delete(exchange)
        connection.close()

    elapsed = finished - started
    print("cores: %d; one web process (RabbitMQ + PostgreSQL), %d sockets"
          % (os.cpu_count(), args.sockets))
    print("fan-out: %d events (batches of %d) to every socket in %.2f s: "
          "%.0f events/s to all %d sockets, %.0f frames/s written"
          % (args.events, args.batch, elapsed, args.events / elapsed, args.sockets,
             args.events * args.sockets / elapsed))
    first = [f for f, _ in found]
    last = [l for _, l in found]
    print("stored -> event on a socket, %d uploads: first socket p50 %.1f ms, p99 %.1f ms; "
          "all %d sockets p50 %.1f ms, p99 %.1f ms"
          % (len(found), 1000 * statistics.median(first), 1000 * percentile(first, 0.99),
             args.sockets, 1000 * statistics.median(last), 1000 * percentile(last, 0.99)))
    report(args.report, "events", "events/s fanned out to each of %d sockets" % args.sockets,
           round(args.events / elapsed), "")
    report(args.report, "events", "stored -> event on the last socket, p99 ms",
           round(1000 * percentile(last, 0.99), 1), "")


if __name__ == "__main__":
    main()
