"""Upload throughput: uploads per second answered 202, three servers side by side.

    .venv/bin/python bench/upload_throughput.py [--count 1000] [--concurrency 16]
                                                [--size-kb 100] [--rounds 3]

Targets, each its own OS process on a free port of 127.0.0.1:

  (a) bare     a Tornado handler that only streams in and parses the multipart
               upload (stream_request_body into one buffer + parse_multipart, as
               handlers/upload.py reads it) and answers 202: the ceiling.
  (b) embedded server.py --role=all on embedded defaults: in-process broker,
               SQLite in a temp dir.  The in-process broker only allows every
               role in one process, so the processor and the notifier run in
               the same process as the web tier and compete with it.
  (c) services server.py --role=web against RabbitMQ + PostgreSQL (a fresh
               database and a fresh AMQP name prefix, both removed at the end);
               no processor runs, so this is accept-only.

The load generator is this process: C keep-alive connections on raw asyncio
sockets, each sending the same multipart request (a JPEG made here with Pillow)
until ``--count`` requests have been sent.  Every target gets ``--warmup``
requests first, in every round.  Rounds alternate the order of the targets
(a b c, c b a, ...); the table reports the median round per target, and the
best.  Figures only: nothing here asserts on time.

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

from common import ROOT, process_cpu_seconds
from tests.helpers import multipart
from tests.processes import Proc, free_port, process_env

# The same limits the app's HTTPServer and upload handlers use (server.py,
# handlers/upload.py: max_upload_bytes 16 MiB + MULTIPART_OVERHEAD 64 KiB).
BARE_BODY_LIMIT = 16 * 1024 * 1024 + 64 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# -- target (a): the bare server, run as a child process of this script ----------

def serve_bare(port, address):
    """The ceiling: read and parse the upload as the app does (one buffer,
    handlers.upload.parse_multipart), answer 202."""
    import logging

    import tornado.httpserver
    import tornado.web
    from tornado.httputil import HTTPInputError

    from handlers.upload import parse_multipart

    # The same logging set-up as server.py, so both pay for the access log alike.
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        stream=sys.stderr, format=LOG_FORMAT)

    @tornado.web.stream_request_body
    class BareUploadHandler(tornado.web.RequestHandler):
        def prepare(self):
            length = self.request.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > BARE_BODY_LIMIT:
                raise tornado.web.HTTPError(413)
            self._body, self._received = bytearray(int(length or 0)), 0
            self.request.connection.set_max_body_size(BARE_BODY_LIMIT)

        def data_received(self, chunk):
            end = self._received + len(chunk)
            self._body[self._received:end] = chunk
            self._received = end

        def post(self):
            body, self._body = self._body, None
            content_type = self.request.headers.get("Content-Type", "")
            if not content_type.startswith("multipart/form-data"):
                raise tornado.web.HTTPError(400)
            try:
                _arguments, files = parse_multipart(content_type, body, self.request.headers)
            except HTTPInputError:
                raise tornado.web.HTTPError(400) from None
            uploaded = files.get("image_data")
            if not uploaded or not len(uploaded[0].body):
                raise tornado.web.HTTPError(400)
            bytes(uploaded[0].body)  # the app's one copy
            request_id = uuid.uuid4().hex
            self.set_status(202)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(json.dumps({"request_id": request_id, "status": "queued",
                                    "status_url": "/api/uploads/%s" % request_id}))

    class ReadyHandler(tornado.web.RequestHandler):
        def get(self):
            self.finish({"status": "ok"})

    async def main():
        app = tornado.web.Application([(r"/api/images", BareUploadHandler),
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
    latencies: list          # seconds, of the 202 answers
    server_cpu: float        # CPU seconds the server process used (all its threads)
    client_cpu: float        # CPU seconds this process used
    note: str = ""

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



def measure(target, request, args):
    """Warm up, then one measured run against ``target``: a RoundResult."""
    asyncio.run(run_load(target.port, request, args.warmup, args.concurrency, args.timeout))
    server_before = process_cpu_seconds(target.proc.pid)
    client_before = time.process_time()
    sent, wall, statuses, latencies = asyncio.run(
        run_load(target.port, request, args.count, args.concurrency, args.timeout))
    return RoundResult(sent, wall, statuses, latencies,
                       process_cpu_seconds(target.proc.pid) - server_before,
                       time.process_time() - client_before)


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


def check_running(targets):
    for target in targets:
        if target.proc.popen.poll() is not None:
            raise RuntimeError("server " + target.proc.describe())


def stop_servers(targets, timeout=40):
    for target in targets:
        if target.proc is not None:
            target.proc.end(timeout)


# -- target (b): wait for the processor's backlog ----------------------------------------

def wait_drained(db_path, timeout):
    """Seconds until no upload is queued or processing in (b)'s SQLite, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            conn = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=5)
            try:
                (pending,) = conn.execute("SELECT count(*) FROM uploads WHERE status IN "
                                          "('queued', 'processing')").fetchone()
            finally:
                conn.close()
            if pending == 0:
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


def print_summary(targets, baseline):
    print()
    print("Summary: the median round of each target by accepted/s (best round beside it)")
    header = ("%-44s %11s %9s %8s %8s %8s %8s %8s"
              % ("target", "accepted/s", "best/s", "p50 ms", "p99 ms", "non-202",
                 "srv CPU", "vs (a)"))
    print(header)
    print("-" * len(header))
    base_rate = None
    if baseline is not None and baseline.rounds:
        base_rate = statistics.median_low([r.rate for r in baseline.rounds])
    for target in targets:
        if not target.rounds:
            continue
        rates = [r.rate for r in target.rounds]
        median = statistics.median_low(rates)
        chosen = target.rounds[rates.index(median)]
        non_202 = sum(r.non_202 for r in target.rounds)
        ratio = ("%.2f" % (median / base_rate)) if base_rate else "-"
        if target is baseline:
            ratio = "1.00"
        print("%-44s %11.1f %9.1f %8.1f %8.1f %8d %7.0f%% %8s"
              % (target.name, median, max(rates), chosen.percentile(50),
                 chosen.percentile(99), non_202, 100 * chosen.server_cpu / chosen.wall,
                 ratio))
    print("-" * len(header))
    print("non-202 = answers other than 202 (and connection errors) over all measured "
          "rounds;\nsrv CPU = CPU time of the server process (all threads) / wall time "
          "of that round;\nlatency = send start to last response byte, 202 answers only.")


# -- main ----------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000,
                        help="measured uploads per target per round (default 1000)")
    parser.add_argument("--concurrency", "-c", type=int, default=16,
                        help="concurrent keep-alive connections (default 16)")
    parser.add_argument("--size-kb", type=int, default=100,
                        help="approximate JPEG size in KB (default 100)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all targets, order alternating (default 3)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="unmeasured uploads before each measured run (default 50)")
    parser.add_argument("--targets", default="a,b,c",
                        help="which of a (bare), b (embedded), c (services) to run")
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
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="127.0.0.1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or set(args.targets) - {"a", "b", "c"}:
        parser.error("--targets takes a comma list of a, b, c")
    if min(args.count, args.concurrency, args.size_kb, args.rounds) < 1 or args.warmup < 0:
        parser.error("--count, --concurrency, --size-kb and --rounds must be positive")
    return args


def _terminate(signum, frame):
    """SIGTERM behaves like Ctrl-C: inside asyncio.run the load is cancelled cleanly,
    elsewhere KeyboardInterrupt is raised; either way the cleanup runs."""
    signal.raise_signal(signal.SIGINT)


def main(argv=None):
    args = parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.port, args.address)

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
        print("load:        %d measured uploads per target per round after %d warm-up, "
              "%d keep-alive connections (raw asyncio sockets, in this process), %d rounds"
              % (args.count, args.warmup, args.concurrency, args.rounds))

        base_env = process_env(**({"LOG_LEVEL": args.log_level} if args.log_level else {}))
        sqlite_path = os.path.join(tmp, "photo-app.db")

        if "a" in args.targets:
            targets.append(Target("a", "(a) bare Tornado multipart parse -> 202",
                                  [os.path.abspath(__file__), "--serve-bare"],
                                  dict(base_env)))
        if "b" in args.targets:
            targets.append(Target("b", "(b) app --role=all, in-process broker+SQLite",
                                  ["server.py", "--role=all"],
                                  dict(base_env, DATABASE_URL="sqlite:///" + sqlite_path),
                                  sqlite_path=sqlite_path))
        if "c" in args.targets:
            import urllib.parse
            pg_database = "photo_bench_%s" % run_id
            amqp_prefix = "photo_bench_%s." % run_id
            conn = pg_admin(args.postgres_url)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("CREATE DATABASE %s" % pg_database)
            finally:
                conn.close()
            parts = urllib.parse.urlsplit(args.postgres_url)
            database_url = urllib.parse.urlunsplit(parts._replace(path="/" + pg_database))
            amqp_channel(args.amqp_url)[0].close()  # fail early if RabbitMQ is away
            targets.append(Target("c", "(c) app --role=web, RabbitMQ+PostgreSQL",
                                  ["server.py", "--role=web"],
                                  dict(base_env, DATABASE_URL=database_url,
                                       AMQP_URL=args.amqp_url, AMQP_PREFIX=amqp_prefix)))
            print("services:    (c) database %s, AMQP prefix %r (both removed at the end)"
                  % (pg_database, amqp_prefix))

        if args.baseline_tree:
            targets += [baseline_twin(target, args.baseline_tree, tmp)
                        for target in targets if target.key in ("b", "c")]
        for target in targets:
            start(target, tmp)
        for target in targets:
            target.proc.wait_ready(target.port, timeout=60)
        print("servers:     " + "; ".join("(%s) pid %d port %d" % (t.key, t.proc.pid, t.port)
                                          for t in targets))
        print()
        print("%-5s %-44s %10s %8s %8s %8s  %s"
              % ("round", "target", "accepted/s", "p50 ms", "p99 ms", "srv CPU", "notes"))

        for number in range(1, args.rounds + 1):
            order = targets if number % 2 else targets[::-1]
            for target in order:
                request = build_request(target.port, body, content_type)
                result = measure(target, request, args)
                notes = []
                if result.non_202:
                    notes.append("non-202: " + fmt_statuses(result.statuses))
                if target.key.startswith("b"):
                    drained = wait_drained(target.sqlite_path, args.drain_timeout)
                    notes.append("processor backlog drained %s after the last 202"
                                 % ("in %.1fs" % drained if drained is not None else
                                    "NOT within %.0fs" % args.drain_timeout))
                if target.key.startswith("c"):
                    depth = take_queue(args.amqp_url, amqp_prefix)
                    notes.append("queue held %d messages (%d answered 202 incl. warm-up), "
                                  "purged" % (depth, result.accepted + args.warmup))
                notes.append("client CPU %.0f%%" % (100 * result.client_cpu / result.wall))
                target.rounds.append(result)
                print("%-5d %-44s %10.1f %8.1f %8.1f %7.0f%%  %s"
                      % (number, target.name, result.rate, result.percentile(50),
                         result.percentile(99), 100 * result.server_cpu / result.wall,
                         "; ".join(notes)), flush=True)
                check_running(targets)

        baseline = next((t for t in targets if t.key == "a"), None)
        print_summary(targets, baseline)
        print()
        print("Notes:")
        if baseline is None:
            print("- (a) was not run, so there are no ratios.")
        if any(t.key == "b" for t in targets):
            print("- (b) runs with --role=all: the in-process broker only connects roles "
                  "inside one process\n  (--role=web with AMQP_URL=memory is refused), so "
                  "the processor (Pillow decode,\n  SQLite write) and the notifier run in the "
                  "web process while it accepts uploads.\n  The bench waits for that backlog "
                  "to drain before the next target is measured.\n  Upload statuses in its "
                  "SQLite at the end: %s" % sqlite_statuses(sqlite_path))
        if any(t.key == "c" for t in targets):
            print("- (c) runs with --role=web and no processor: accept only (a queued row in "
                  "PostgreSQL\n  and a persistent message confirmed by RabbitMQ per 202). "
                  "Its cache is the\n  default in-memory one; the upload path does not use "
                  "the cache.")
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
