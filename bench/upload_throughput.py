"""Upload throughput: uploads per second answered 202, four servers side by side.

    .venv/bin/python bench/upload_throughput.py [--seconds 8] [--concurrency 32]
                                                [--size-kb 100] [--rounds 4]

Targets, each its own OS process on a free port of 127.0.0.1:

  (a) bare     a Tornado handler that only streams in and parses the multipart
               upload (stream_request_body into one buffer + parse_multipart, as
               handlers/upload.py reads it) and answers 202: the first ceiling.
  (b) embedded server.py --role=all on embedded defaults: in-process broker,
               SQLite in a temp dir.  The in-process broker only allows every
               role in one process, so the processor and the notifier run in
               the same process as the web tier and compete with it.
  (c) services server.py --role=web against RabbitMQ + PostgreSQL (a fresh
               database and a fresh AMQP name prefix, both removed at the end);
               no processor runs, so this is accept-only.
  (d) publish  (a), then a persistent publish on one confirm-mode channel,
               answered 202 at its confirm, every request's publish outstanding
               at once: the broker's own limit, the second ceiling.

The headline ratios are (c)/(a) (target >= 0.5) and (c)/(d) (target >= 0.9).

The load generator is wrk where it is installed (one thread, ``--concurrency``
connections, ``--seconds`` per run, a Lua script POSTing the same multipart
request: a JPEG made here with Pillow), else (or with ``--client python``) this
process: keep-alive connections on raw asyncio sockets until ``--count``
requests have been sent.  Every target gets ``--warmup`` requests first, in
every round.  Rounds alternate the order of the targets (a b c d, d c b a, a b d c,
c d b a, ...: ``round_order``);
the table reports the median round per target, and the best.  Figures only:
nothing here asserts on time.

Everything started is stopped and removed on the way out, also on error,
Ctrl-C or SIGTERM: the servers, the temp dir, the database, the AMQP objects.
"""

import argparse
import asyncio
import collections
import io
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import pathlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from common import (ROOT, WRK, cpu_seconds_of, process_cpu_seconds, report, require_wrk,
                    wrk)
from tests.helpers import multipart
from tests.processes import Proc, free_port, process_env

# The same limits the app's HTTPServer and upload handlers use (server.py,
# handlers/upload.py: max_upload_bytes 16 MiB + MULTIPART_OVERHEAD 64 KiB).
BARE_BODY_LIMIT = 16 * 1024 * 1024 + 64 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# -- targets (a) and (d): minimal servers, run as child processes of this script ------

def serve_minimal(port, address, amqp_url=None, amqp_prefix=None):
    """(a) without ``amqp_url``: read and parse the upload as the app does (one
    buffer, its delimiters searched as it arrives, handlers.upload.parse_multipart;
    the image a view into the buffer), answer 202.  (d) with it: the same,
    then publish it (persistent, mandatory) on one confirm-mode channel and answer
    202 once its confirm came, 503 on a nack or a return; publishes of all the
    requests in flight are outstanding at once (pipelined confirms)."""
    import logging

    import tornado.httpserver
    import tornado.web
    from tornado.httputil import HTTPInputError

    from handlers.upload import Delimiters, parse_multipart

    # The same logging set-up as server.py, so both pay for the access log alike.
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        stream=sys.stderr, format=LOG_FORMAT)
    logging.getLogger("pika").setLevel(logging.WARNING)
    publisher = None

    @tornado.web.stream_request_body
    class MinimalUploadHandler(tornado.web.RequestHandler):
        def prepare(self):
            length = self.request.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > BARE_BODY_LIMIT:
                raise tornado.web.HTTPError(413)
            self._body = bytearray()  # grown as the chunks arrive, as in the app
            self._delimiters = Delimiters.of(self.request.headers.get("Content-Type", ""))
            self.request.connection.set_max_body_size(BARE_BODY_LIMIT)

        def data_received(self, chunk):
            self._body += chunk
            if self._delimiters is not None:
                self._delimiters.scan(self._body)

        async def post(self):
            body, self._body = self._body, None
            content_type = self.request.headers.get("Content-Type", "")
            if not content_type.startswith("multipart/form-data"):
                raise tornado.web.HTTPError(400)
            try:
                arguments, files = parse_multipart(content_type, body, self.request.headers,
                                                   self._delimiters)
            except HTTPInputError:
                raise tornado.web.HTTPError(400) from None
            uploaded = files.get("image_data")
            if not uploaded or not len(uploaded[0].body):
                raise tornado.web.HTTPError(400)
            data = uploaded[0].body  # a view, as in the app
            request_id = uuid.uuid4().hex
            if publisher is not None:
                nickname = bytes(arguments.get("nickname", [b""])[0]).decode("utf-8")
                # pika takes bytes: the app's RabbitMQ publish makes the same copy.
                if not await publisher.publish(bytes(data), request_id, nickname,
                                               uploaded[0].filename or ""):
                    raise tornado.web.HTTPError(503)
            self.set_status(202)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(json.dumps({"request_id": request_id, "status": "queued",
                                    "status_url": "/api/uploads/%s" % request_id}))

    class ReadyHandler(tornado.web.RequestHandler):
        def get(self):
            self.finish({"status": "ok"})

    async def main():
        nonlocal publisher
        if amqp_url:
            publisher = await PipelinedPublisher.connect(amqp_url, amqp_prefix)
        app = tornado.web.Application([(r"/api/images", MinimalUploadHandler),
                                       (r"/readyz", ReadyHandler)])
        server = tornado.httpserver.HTTPServer(app, max_body_size=BARE_BODY_LIMIT,
                                               idle_connection_timeout=60, body_timeout=120)
        server.listen(port, address)
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
        await stop
        server.stop()

    asyncio.run(main())


class PipelinedPublisher:
    """(d)'s broker client, pika on the IOLoop: one channel in confirm mode, a
    future per delivery tag, resolved by each (or a ``multiple``) confirm."""

    def __init__(self, channel, topology):
        self.channel, self.topology = channel, topology
        self.pending, self.returned, self.tag = {}, set(), 0
        channel.add_on_return_callback(
            lambda _ch, _method, properties, _body: self.returned.add(properties.message_id))

    @classmethod
    async def connect(cls, amqp_url, prefix):
        import pika
        from pika.adapters.tornado_connection import TornadoConnection

        from broker import UPLOAD_ROUTING_KEY, Topology

        loop = asyncio.get_running_loop()

        def callback():
            future = loop.create_future()
            return future, lambda *args: future.done() or future.set_result(args[-1] if args
                                                                            else None)
        opened, on_open = callback()
        TornadoConnection(pika.URLParameters(amqp_url), on_open_callback=on_open,
                          on_open_error_callback=lambda _c, exc: opened.set_exception(
                              RuntimeError("cannot connect: %r" % exc)))
        connection = await opened
        ready, on_ready = callback()
        channel = connection.channel(on_open_callback=on_ready)
        await ready
        topology = Topology(prefix)
        [spec] = [q for q in topology.queues if q.name == topology.upload_queue]
        for declare in (
                lambda done: channel.exchange_declare(topology.upload_exchange, "direct",
                                                      durable=True, callback=done),
                lambda done: channel.queue_declare(spec.name, durable=True,
                                                   arguments=spec.amqp_arguments,
                                                   callback=done),
                lambda done: channel.queue_bind(spec.name, topology.upload_exchange,
                                                routing_key=UPLOAD_ROUTING_KEY, callback=done)):
            done, on_done = callback()
            declare(on_done)
            await done
        publisher = cls(channel, topology)
        done, on_done = callback()
        channel.confirm_delivery(publisher.on_confirm, callback=on_done)
        await done
        return publisher

    async def publish(self, data, request_id, nickname, filename):
        """True once the broker confirmed the message, False if it refused it."""
        import pika

        from broker import UPLOAD_ROUTING_KEY

        future = asyncio.get_running_loop().create_future()
        self.tag += 1
        self.pending[self.tag] = (future, request_id)
        self.channel.basic_publish(
            self.topology.upload_exchange, UPLOAD_ROUTING_KEY, data, pika.BasicProperties(
                message_id=request_id, content_type="image/jpeg",
                headers={"nickname": nickname, "filename": filename, "size": len(data)},
                delivery_mode=pika.DeliveryMode.Persistent), mandatory=True)
        return await future

    def on_confirm(self, frame):
        import pika
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        tags = ([t for t in self.pending if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        for tag in tags:
            future, request_id = self.pending.pop(tag)
            returned = request_id in self.returned
            self.returned.discard(request_id)
            future.set_result(ack and not returned)


# -- the upload --------------------------------------------------------------------

def make_jpeg(target_bytes, seed=20240):
    """A photo-like JPEG (smooth colour blotches, some grain) of about target_bytes.

    Returns (data, width, height, quality)."""
    from PIL import Image

    def render(width, height, quality):
        rng = random.Random(seed)
        small = (max(2, width // 24), max(2, height // 24))
        blotches = Image.frombytes("RGB", small, rng.randbytes(small[0] * small[1] * 3))
        blotches = blotches.resize((width, height), Image.BICUBIC)
        grain = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
        buffer = io.BytesIO()
        Image.blend(blotches, grain, 0.12).save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()

    pixels = target_bytes * 4           # a first guess: about 2 bits a pixel
    best = None
    for _ in range(8):
        width = max(16, int(math.sqrt(pixels * 4 / 3)))
        height = max(16, width * 3 // 4)
        low, high = 10, 95
        while low < high:               # the lowest quality that reaches the target
            quality = (low + high) // 2
            if len(render(width, height, quality)) < target_bytes:
                low = quality + 1
            else:
                high = quality
        data = render(width, height, low)
        if best is None or abs(len(data) - target_bytes) < abs(len(best[0]) - target_bytes):
            best = (data, width, height, low)
        if abs(len(data) - target_bytes) <= target_bytes * 0.05:
            break
        pixels = pixels * (1.5 if len(data) < target_bytes else 0.7)
    return best


def build_request(port, body, content_type):
    head = ("POST /api/images HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\n"
            "Content-Length: %d\r\nUser-Agent: upload-throughput-bench\r\n\r\n"
            % (port, content_type, len(body)))
    return head.encode("latin-1") + body


# -- the load generator ------------------------------------------------------------

@dataclass
class RoundResult:
    sent: int
    wall: float
    statuses: collections.Counter
    latencies: list          # seconds, of the 202 answers (the Python client)
    server_cpu: float        # CPU seconds the server process used (all its threads)
    client_cpu: float        # CPU seconds the load generator used
    note: str = ""
    quantiles: dict = None   # {percentile: ms} as wrk measured them (all answers)
    services_cpu: dict = None  # {"RabbitMQ": CPU seconds, "PostgreSQL": ...} in the run

    @property
    def accepted(self):
        return self.statuses.get(202, 0)

    @property
    def rate(self):
        return self.accepted / self.wall if self.wall > 0 else 0.0

    @property
    def non_202(self):
        return self.sent - self.accepted

    def percentile(self, p):
        if self.quantiles is not None:
            return self.quantiles[p]
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000


async def _read_response(reader):
    """(status, keep_alive) of one HTTP/1.1 response; the body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and not 100 <= status < 200:
        await reader.read()
        keep = False
    return status, keep


async def run_load(port, request, count, concurrency, timeout):
    """Send ``request`` ``count`` times over ``concurrency`` keep-alive connections."""
    issued = itertools.count()
    statuses = collections.Counter()
    latencies = []

    async def exchange(reader, writer):
        writer.write(request)
        await writer.drain()
        return await _read_response(reader)

    async def worker():
        reader = writer = None
        try:
            while next(issued) < count:
                started = time.perf_counter()
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    status, keep = await asyncio.wait_for(exchange(reader, writer), timeout)
                except (OSError, EOFError, ValueError, asyncio.TimeoutError,
                        asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    status, keep = "error:%s" % type(exc).__name__, False
                elapsed = time.perf_counter() - started
                statuses[status] += 1
                if status == 202:
                    latencies.append(elapsed)
                if not keep and writer is not None:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
    wall = time.perf_counter() - started
    return count, wall, statuses, latencies



# wrk's script: POST the bench's multipart body (from the file BENCH_BODY), count
# the answers by status over every thread, print them with the latency quantiles.
WRK_SCRIPT = r"""
local file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method, wrk.body = "POST", file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end
  end
  io.write("BENCH statuses")
  for status, n in pairs(total) do io.write(string.format(" %d=%d", status, n)) end
  local errors = summary.errors
  io.write(string.format("\nBENCH run %d %d %d %d %d\n", summary.duration, summary.requests,
    errors.connect + errors.read + errors.write, errors.timeout, latency:percentile(50)))
  io.write(string.format("BENCH p99 %d\n", latency:percentile(99)))
end
"""


def run_wrk(target, args):
    """One measured run of wrk (``--seconds``, one thread, ``--concurrency``
    connections): ``(sent, wall, statuses, quantiles, client CPU seconds)``."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = wrk("http://127.0.0.1:%d/api/images" % target.port, args.seconds, args.concurrency,
              "--timeout", "%ds" % args.timeout, "-s", args.wrk_script, env=args.wrk_env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = {line.split()[1]: line.split()[2:] for line in out.splitlines()
             if line.startswith("BENCH ")}
    statuses = collections.Counter({int(k): int(v) for k, v in
                                    (item.split("=") for item in lines["statuses"])})
    duration, requests, socket_errors, timeouts, p50 = (int(v) for v in lines["run"])
    if socket_errors:
        statuses["error:socket"] += socket_errors
    if timeouts:
        statuses["error:timeout"] += timeouts
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return (sum(statuses.values()), duration / 1e6, statuses,
            {50: p50 / 1000, 99: int(lines["p99"][0]) / 1000}, cpu)


# The shared services' processes, whose CPU each run also reads (other users of the
# machine count too).
SERVICES = (("RabbitMQ", "beam.smp"), ("PostgreSQL", "postgres"))


def measure(target, request, args):
    """Warm up, then one measured run against ``target``: a RoundResult."""
    warm_up = asyncio.run(run_load(target.port, request, args.warmup, args.concurrency,
                                   args.timeout))
    server_before = process_cpu_seconds(target.proc.pid)
    services_before = {name: cpu_seconds_of(command) for name, command in SERVICES}
    if args.wrk:
        sent, wall, statuses, quantiles, client_cpu = run_wrk(target, args)
        latencies = []
    else:
        client_before = time.process_time()
        sent, wall, statuses, latencies = asyncio.run(
            run_load(target.port, request, args.count, args.concurrency, args.timeout))
        client_cpu, quantiles = time.process_time() - client_before, None
    target.accepted += warm_up[2].get(202, 0) + statuses.get(202, 0)
    return RoundResult(sent, wall, statuses, latencies,
                       process_cpu_seconds(target.proc.pid) - server_before, client_cpu,
                       quantiles=quantiles,
                       services_cpu={name: cpu_seconds_of(command) - services_before[name]
                                     for name, command in SERVICES})


# -- the servers ---------------------------------------------------------------------

@dataclass
class Target:
    key: str
    name: str
    args: list  # after the Python interpreter
    env: dict
    port: int = 0
    proc: Proc = None
    rounds: list = field(default_factory=list)
    sqlite_path: str = None  # (b): its database, to wait for its backlog
    accepted: int = 0        # 202s so far, warm-ups included


def baseline_twin(target, tree, tmp):
    """``target`` run from the source tree ``tree`` (its own SQLite for (b); (c) shares
    the database and queue names: runs are one at a time and the queue is purged)."""
    tree = os.path.abspath(tree)
    twin = Target(target.key + "0", "%s [%s]" % (target.name.split(",")[0],
                                                 os.path.basename(tree)),
                  [os.path.join(tree, target.args[0]), *target.args[1:]], dict(target.env))
    if target.sqlite_path:
        twin.sqlite_path = os.path.join(tmp, "baseline.db")
        twin.env["DATABASE_URL"] = "sqlite:///" + twin.sqlite_path
    return twin


def start(target, tmp):
    target.port = free_port()
    target.proc = Proc("server-%s" % target.key,
                       target.args + ["--port=%d" % target.port, "--address=127.0.0.1"],
                       target.env, pathlib.Path(tmp))


def start_all(targets, baseline_tree, tmp):
    """Add the twins of (b) and (c) from ``baseline_tree`` (if any) to ``targets``, start
    every target and wait until each answers."""
    if baseline_tree:
        targets += [baseline_twin(target, baseline_tree, tmp)
                    for target in targets if target.key in ("b", "c")]
    for target in targets:
        start(target, tmp)
    for target in targets:
        target.proc.wait_ready(target.port, timeout=60)


def round_order(targets, number):
    """The targets in round ``number``'s order: a b c d, d c b a, a b d c, c d b a, ...
    Every other pair of rounds (c) and (d) trade places, so that each of them runs
    right after (b) equally often: whichever RabbitMQ target follows (b) measures
    slower (RabbitMQ sat idle through (b) and its drain), 0.64-0.89x the other."""
    order = list(targets if number % 2 else targets[::-1])
    keys = [target.key for target in order]
    if (number - 1) // 2 % 2 and "c" in keys and "d" in keys:
        i, j = keys.index("c"), keys.index("d")
        order[i], order[j] = order[j], order[i]
    return order


def check_running(targets):
    for target in targets:
        if target.proc.popen.poll() is not None:
            raise RuntimeError("server " + target.proc.describe())


def stop_servers(targets, timeout=40):
    for target in targets:
        if target.proc is not None:
            target.proc.end(timeout)


# -- target (b): wait for the processor's backlog ----------------------------------------

def wait_drained(db_path, accepted, timeout):
    """Seconds until ``accepted`` uploads have ended (stored, failed ...) in (b)'s
    SQLite, or None.  (An accepted upload has no row until the processor begins it.)"""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            conn = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=5)
            try:
                (ended,) = conn.execute("SELECT count(*) FROM uploads WHERE status NOT IN "
                                        "('queued', 'processing')").fetchone()
            finally:
                conn.close()
            if ended >= accepted:
                return time.monotonic() - started
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    return None


def sqlite_statuses(db_path):
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=5)
        try:
            return dict(conn.execute("SELECT status, count(*) FROM uploads GROUP BY status"))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return {"error": str(exc)}


# -- target (c): PostgreSQL database and AMQP names ---------------------------------------

def pg_admin(admin_url):
    import psycopg2
    conn = psycopg2.connect(admin_url, connect_timeout=5)
    conn.autocommit = True
    return conn


def amqp_channel(amqp_url):
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    return connection, connection.channel()


def amqp_topology(prefix):
    from broker import Topology
    return Topology(prefix)


def take_queue(amqp_url, prefix):
    """Messages in (c)'s upload queue; the queue is purged for the next round."""
    connection, channel = amqp_channel(amqp_url)
    try:
        queue = amqp_topology(prefix).upload_queue
        depth = channel.queue_declare(queue, passive=True).method.message_count
        channel.queue_purge(queue)
        return depth
    finally:
        connection.close()


def delete_amqp_objects(amqp_url, prefix):
    topology = amqp_topology(prefix)
    connection, channel = amqp_channel(amqp_url)
    try:
        for spec in topology.queues:
            channel.queue_delete(spec.name)
        for exchange in topology.exchanges:
            channel.exchange_delete(exchange)
    finally:
        connection.close()


# -- output ----------------------------------------------------------------------------

def fmt_statuses(counter):
    return ", ".join("%s x%d" % (status, n) for status, n in sorted(
        counter.items(), key=lambda item: str(item[0])) if status != 202) or "-"


def median_rate(target):
    return statistics.median_low([r.rate for r in target.rounds]) if target.rounds else None


def print_summary(targets, ceilings):
    """The median round of each target, with its ratio to each ceiling in ``ceilings``
    ({column name: target})."""
    print()
    print("Summary: the median round of each target by accepted/s (best round beside it)")
    header = ("%-44s %11s %9s %8s %8s %8s %8s" % ("target", "accepted/s", "best/s", "p50 ms",
                                                  "p99 ms", "non-202", "srv CPU")
              + "".join(" %8s" % name for name in ceilings))
    print(header)
    print("-" * len(header))
    for target in targets:
        if not target.rounds:
            continue
        rates = [r.rate for r in target.rounds]
        median = median_rate(target)
        chosen = target.rounds[rates.index(median)]
        non_202 = sum(r.non_202 for r in target.rounds)
        ratios = "".join(" %8s" % ("%.2f" % (median / median_rate(ceiling))
                                   if median_rate(ceiling) else "-")
                         for ceiling in ceilings.values())
        print("%-44s %11.1f %9.1f %8.1f %8.1f %8d %7.0f%%%s"
              % (target.name, median, max(rates), chosen.percentile(50),
                 chosen.percentile(99), non_202, 100 * chosen.server_cpu / chosen.wall,
                 ratios))
    print("-" * len(header))
    print("non-202 = answers other than 202 (and connection errors) over all measured "
          "rounds;\nsrv CPU = CPU time of the server process (all threads) / wall time "
          "of that round;\nlatency = send start to last response byte, 202 answers only.")


# The headline figures: (c) against each ceiling, beside its target.
HEADLINES = (("a", ">= 0.5", "(c) --role=web on RabbitMQ+PostgreSQL / (a) bare parse"),
             ("d", ">= 0.9", "(c) --role=web on RabbitMQ+PostgreSQL / (d) parse + "
                             "pipelined confirmed publish"))


def paired_ratio(web, ceiling):
    """The median over rounds of ``web``'s rate over ``ceiling``'s in the same round.
    Both run in each round, one beside the other, so a drift in what the machine or
    the broker gives (RabbitMQ slows as the purged messages of earlier runs are
    cleaned up) divides out, where a ratio of medians would mix rounds."""
    return statistics.median(w.rate / c.rate for w, c in zip(web.rounds, ceiling.rounds)
                             if c.rate > 0)


def print_headlines(targets, report_path):
    """The ratios of (c), and of its baseline twin when there is one, to (a) and
    (d); only (c)'s own are reported."""
    by_key = {target.key: target for target in targets if target.rounds}
    print()
    print("Headline ratios (the median over rounds of the ratio within each round):")
    for key, goal, measure in HEADLINES:
        ceiling = by_key.get(key)
        for web in (by_key.get("c"), by_key.get("c0")):
            if web is None or ceiling is None:
                continue
            value = paired_ratio(web, ceiling)
            rounds = " ".join("%.2f" % (w.rate / c.rate)
                              for w, c in zip(web.rounds, ceiling.rounds) if c.rate > 0)
            name = "(c)" if web.key == "c" else "(c) [%s]" % web.name.split("[")[-1].rstrip("]")
            print("  %s\n      %.2f  (target %s; rounds: %s)"
                  % (measure.replace("(c)", name, 1), value, goal, rounds))
            if web.key == "c":
                report(report_path, "upload_throughput", measure, round(value, 3), goal)


# -- main ----------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=("wrk", "python"), default=None,
                        help="the load generator: wrk (default where /usr/bin/wrk or wrk on "
                        "PATH exists) or this process's asyncio sockets")
    parser.add_argument("--seconds", type=int, default=8,
                        help="wrk: seconds of each measured run (default 8)")
    parser.add_argument("--count", type=int, default=1000,
                        help="python client: measured uploads per target per round "
                        "(default 1000)")
    parser.add_argument("--concurrency", "-c", type=int, default=32,
                        help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--size-kb", type=int, default=100,
                        help="approximate JPEG size in KB (default 100)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds over all targets, order alternating (default 4)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="unmeasured uploads before each measured run (default 50)")
    parser.add_argument("--targets", default="a,b,c,d",
                        help="which of a (bare), b (embedded), c (services), d (parse and "
                        "publish) to run")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds before one request counts as an error")
    parser.add_argument("--drain-timeout", type=float, default=600.0,
                        help="seconds to wait for (b)'s processor backlog between runs")
    parser.add_argument("--log-level", default=None,
                        help="LOG_LEVEL for every server (default: the app's, INFO)")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="an admin connection; (c) gets a new database next to it")
    parser.add_argument("--amqp-url", default=os.environ.get(
        "TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--baseline-tree", default=None, metavar="DIR",
                        help="also run (b) and (c) from the source tree DIR (say the commit "
                        "before a change, checked out there), side by side with this one")
    parser.add_argument("--report", default=None, metavar="FILE",
                        help="append the headline ratios to FILE (bench/all.py's table)")
    parser.add_argument("--serve-minimal", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--publish-prefix", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="127.0.0.1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.wrk = WRK if args.client in (None, "wrk") else None
    if args.client == "wrk" and args.wrk is None:
        require_wrk("bench/upload_throughput.py --client wrk")
    if not args.targets or set(args.targets) - {"a", "b", "c", "d"}:
        parser.error("--targets takes a comma list of a, b, c, d")
    if min(args.count, args.concurrency, args.size_kb, args.rounds) < 1 or args.warmup < 0:
        parser.error("--count, --concurrency, --size-kb and --rounds must be positive")
    return args


def _terminate(signum, frame):
    """SIGTERM behaves like Ctrl-C: inside asyncio.run the load is cancelled cleanly,
    elsewhere KeyboardInterrupt is raised; either way the cleanup runs."""
    signal.raise_signal(signal.SIGINT)


def main(argv=None):
    args = parse_args(argv)
    if args.serve_minimal:
        return serve_minimal(args.port, args.address, args.publish_prefix and args.amqp_url,
                             args.publish_prefix)

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. started with nohup or &
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    run_id = uuid.uuid4().hex[:8]
    tmp = tempfile.mkdtemp(prefix="upload-bench-")
    pg_database = amqp_prefix = None
    targets = []
    failed = False
    try:
        data, width, height, quality = make_jpeg(args.size_kb * 1000)
        content_type, body = multipart({"nickname": "bench"},
                                       {"image_data": ("bench.jpg", data)})
        if args.wrk:
            args.wrk_script = os.path.join(tmp, "upload.lua")
            with open(args.wrk_script, "w") as out:
                out.write(WRK_SCRIPT)
            with open(os.path.join(tmp, "upload.body"), "wb") as out:
                out.write(body)
            args.wrk_env = dict(os.environ, BENCH_BODY=os.path.join(tmp, "upload.body"),
                                BENCH_CONTENT_TYPE=content_type)

        import tornado
        cores = os.cpu_count()
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
        print("Upload throughput (uploads answered 202 per second)")
        print("command:     %s" % " ".join([os.path.relpath(sys.executable, ROOT)]
                                             + [os.path.relpath(sys.argv[0], ROOT)]
                                             + sys.argv[1:]))
        print("machine:     %d cores (os.cpu_count), %d usable by this process; "
              "load average %.2f %.2f %.2f" % ((cores, usable) + os.getloadavg()))
        print("software:    Python %s, Tornado %s, %s" % (platform.python_version(),
                                                          tornado.version, platform.platform()))
        print("upload:      JPEG %dx%d q%d, %d bytes; multipart body %d bytes"
              % (width, height, quality, len(data), len(body)))
        if args.wrk:
            print("load:        wrk -t1 -c%d -d%ds per target per round after %d warm-up "
                  "uploads, %d rounds" % (args.concurrency, args.seconds, args.warmup,
                                          args.rounds))
        else:
            print("load:        %d measured uploads per target per round after %d warm-up, "
                  "%d keep-alive connections (raw asyncio sockets, in this process), %d rounds"
                  % (args.count, args.warmup, args.concurrency, args.rounds))

        base_env = process_env(**({"LOG_LEVEL": args.log_level} if args.log_level else {}))
        sqlite_path = os.path.join(tmp, "photo-app.db")

        if "a" in args.targets:
            targets.append(Target("a", "(a) bare Tornado multipart parse -> 202",
                                  [os.path.abspath(__file__), "--serve-minimal"],
                                  dict(base_env)))
        if "b" in args.targets:
            targets.append(Target("b", "(b) app --role=all, in-process broker+SQLite",
                                  ["server.py", "--role=all"],
                                  dict(base_env, DATABASE_URL="sqlite:///" + sqlite_path),
                                  sqlite_path=sqlite_path))
        if "c" in args.targets or "d" in args.targets:
            amqp_prefix = "photo_bench_%s." % run_id
            amqp_channel(args.amqp_url)[0].close()  # fail early if RabbitMQ is away
        if "c" in args.targets:
            import urllib.parse
            pg_database = "photo_bench_%s" % run_id
            conn = pg_admin(args.postgres_url)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("CREATE DATABASE %s" % pg_database)
            finally:
                conn.close()
            parts = urllib.parse.urlsplit(args.postgres_url)
            database_url = urllib.parse.urlunsplit(parts._replace(path="/" + pg_database))
            targets.append(Target("c", "(c) app --role=web, RabbitMQ+PostgreSQL",
                                  ["server.py", "--role=web"],
                                  dict(base_env, DATABASE_URL=database_url,
                                       AMQP_URL=args.amqp_url, AMQP_PREFIX=amqp_prefix)))
            print("services:    (c) database %s, AMQP prefix %r (both removed at the end)"
                  % (pg_database, amqp_prefix))
        if "d" in args.targets:
            # The same upload exchange and queue as (c): runs go one at a time and the
            # queue is purged after each.
            targets.append(Target("d", "(d) bare parse + pipelined confirmed publish",
                                  [os.path.abspath(__file__), "--serve-minimal",
                                   "--amqp-url", args.amqp_url, "--publish-prefix", amqp_prefix],
                                  dict(base_env)))

        start_all(targets, args.baseline_tree, tmp)
        print("servers:     " + "; ".join("(%s) pid %d port %d" % (t.key, t.proc.pid, t.port)
                                          for t in targets))
        print()
        print("%-5s %-44s %10s %8s %8s %8s  %s"
              % ("round", "target", "accepted/s", "p50 ms", "p99 ms", "srv CPU", "notes"))

        for number in range(1, args.rounds + 1):
            for target in round_order(targets, number):
                request = build_request(target.port, body, content_type)
                result = measure(target, request, args)
                notes = []
                if result.non_202:
                    notes.append("non-202: " + fmt_statuses(result.statuses))
                if target.key.startswith("b"):
                    drained = wait_drained(target.sqlite_path, target.accepted, args.drain_timeout)
                    notes.append("processor backlog drained %s after the last 202"
                                 % ("in %.1fs" % drained if drained is not None else
                                    "NOT within %.0fs" % args.drain_timeout))
                if target.key.startswith(("c", "d")):
                    depth = take_queue(args.amqp_url, amqp_prefix)
                    notes.append("queue held %d messages (%d answered 202 incl. warm-up), "
                                  "purged" % (depth, result.accepted + args.warmup))
                notes.append("client CPU %.0f%%" % (100 * result.client_cpu / result.wall))
                notes += ["%s CPU %.0f%%" % (name, 100 * cpu / result.wall)
                          for name, cpu in result.services_cpu.items()]
                target.rounds.append(result)
                print("%-5d %-44s %10.1f %8.1f %8.1f %7.0f%%  %s"
                      % (number, target.name, result.rate, result.percentile(50),
                         result.percentile(99), 100 * result.server_cpu / result.wall,
                         "; ".join(notes)), flush=True)
                check_running(targets)

        ceilings = {"vs (%s)" % t.key: t for t in targets if t.key in ("a", "d")}
        print_summary(targets, ceilings)
        print_headlines(targets, args.report)
        print()
        print("Notes:")
        if not ceilings:
            print("- neither (a) nor (d) was run, so there are no ratios.")
        if any(t.key == "b" for t in targets):
            print("- (b) runs with --role=all: the in-process broker only connects roles "
                  "inside one process\n  (--role=web with AMQP_URL=memory is refused), so "
                  "the processor (Pillow decode,\n  SQLite write) and the notifier run in the "
                  "web process while it accepts uploads.\n  The bench waits for that backlog "
                  "to drain before the next target is measured.\n  Upload statuses in its "
                  "SQLite at the end: %s" % sqlite_statuses(sqlite_path))
        if any(t.key == "c" for t in targets):
            print("- (c) runs with --role=web and no processor: accept only (a persistent "
                  "message\n  confirmed by RabbitMQ per 202; no database write). Its cache "
                  "is the default\n  in-memory one; the upload path does not use the cache.")
        if any(t.key == "d" for t in targets):
            print("- (d) is (a) plus a persistent, mandatory publish on one confirm-mode "
                  "channel,\n  answered 202 at its confirm, every request's publish "
                  "outstanding at once:\n  the broker's own limit here, for this client "
                  "library (pika).")
        print("- Client and servers share the %d cores; the machine is shared and noisy, "
              "so compare\n  ratios within one run rather than absolute figures across runs."
              % cores)
    except KeyboardInterrupt:
        failed = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    except Exception:
        failed = True
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup(targets, tmp, args, pg_database, amqp_prefix)
    return 130 if failed else 0


def cleanup(targets, tmp, args, pg_database, amqp_prefix):
    try:
        stop_servers(targets)
    except Exception as exc:
        print("cleanup: stopping servers: %s" % exc, file=sys.stderr)
    if pg_database:
        try:
            conn = pg_admin(args.postgres_url)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % pg_database)
            finally:
                conn.close()
        except Exception as exc:
            print("cleanup: dropping database %s: %s" % (pg_database, exc), file=sys.stderr)
    if amqp_prefix:
        try:
            delete_amqp_objects(args.amqp_url, amqp_prefix)
        except Exception as exc:
            print("cleanup: deleting AMQP objects %r*: %s" % (amqp_prefix, exc),
                  file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
