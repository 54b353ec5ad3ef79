"""Cached reads: GET /api/images/{id}/content per second, beside a bare Tornado
handler that writes the same bytes from memory.

    .venv/bin/python bench/reads.py [--rounds 3] [--duration 8] [--connections 32]
                                    [--targets a,b,c,d] [--baseline-tree DIR]
                                    [--report FILE]

Targets, each its own OS process on a free port of 127.0.0.1, all serving the
same ~98 KB JPEG:

  (a) bare      a Tornado handler that writes the bytes from memory (the ceiling).
  (b) redis     server.py --role=web on RabbitMQ + PostgreSQL with Redis configured;
                the image is read once before measuring, so every read is a hit.
  (c) embedded  server.py --role=all on embedded defaults (in-memory cache), a hit.
  (d) no cache  server.py --role=web on RabbitMQ + PostgreSQL with CACHE=none: every
                read is a database query.

The load is wrk (``wrk -t1 -c32 -d8s --latency``; install it with ``apt-get install
wrk``): one warm-up second, then one measured run per target per round, the order
of the targets alternating between rounds.  The table reports each target's median
round (req/s, wrk's p99 latency) and its ratio to (a); the headline ratios are the
median over rounds of the ratio within each round (as in upload_throughput.py: a
drift of the machine between rounds divides out).  Figures only: nothing here
asserts on time.

``--baseline-tree DIR`` also runs (b) and (c) from another source tree side by side
(say the commit before a change: ``git archive main | tar -x -C DIR``).

Everything started is stopped and removed on the way out: the servers, the
temporary database, the AMQP objects, the Redis keys and the temp dir.
"""

import argparse
import collections
import os
import pathlib
import re
import signal
import statistics
import sys
import tempfile
import urllib.parse
import uuid

from common import process_cpu_seconds, report, require_wrk, wrk
from tests.processes import RABBIT_READY, Proc, fetch, process_env, upload, wait_stored
from upload_throughput import (LOG_FORMAT, Target, amqp_channel, check_running, cleanup,
                               make_jpeg, paired_ratio, pg_admin, start_all)

IMAGE_BYTES = 98_000
TARGET_RATIO = 0.85  # (b) / (a)
Round = collections.namedtuple("Round", "rate p99 cpu")  # req/s, wrk's p99 ms, CPU us/req


# -- target (a) -------------------------------------------------------------------------

def serve_bare(port, address, path):
    """The ceiling: the image's bytes, read once from ``path``, written from memory."""
    import asyncio
    import logging

    import tornado.web

    from server import shutdown_signal

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        stream=sys.stderr, format=LOG_FORMAT)  # an access line, as the app
    with open(path, "rb") as image:
        data = image.read()

    class BareBytesHandler(tornado.web.RequestHandler):
        def compute_etag(self):
            return None  # no hash of the body per request: the app sends its stored one

        def get(self, image_id):
            self.set_header("Content-Type", "image/jpeg")
            self.finish(data)

    class ReadyHandler(tornado.web.RequestHandler):
        def get(self):
            self.finish({"status": "ok"})

    async def main():
        app = tornado.web.Application([(r"/api/images/([0-9]+)/content", BareBytesHandler),
                                       (r"/readyz", ReadyHandler)])
        server = app.listen(port, address)
        await shutdown_signal()  # SIGINT or SIGTERM, as the app's
        server.stop()

    asyncio.run(main())


# -- wrk ----------------------------------------------------------------------------------

def read_url(url, seconds, connections):
    """``(requests per second, p99 ms, requests, non-2xx/3xx answers, errors)`` of one
    wrk run."""
    out = wrk(url, seconds, connections, "--latency")
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)$", out, re.M)
    if rate is None or p99 is None or count is None:
        raise RuntimeError("cannot read wrk's output:\n" + out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return (float(rate.group(1)), float(p99.group(1)) * scale, int(count.group(1)),
            int(bad.group(1)) if bad else 0, errors.group(1).strip() if errors else "")


# -- set-up ---------------------------------------------------------------------------------

def store_image(port, data):
    """Upload ``data`` through the server on ``port``; the stored image's id."""
    code, body = upload(port, data, nickname="reads-bench", filename="bench.jpg")
    if code != 202:
        raise RuntimeError("upload answered %s: %s" % (code, body))
    return wait_stored(port, body["request_id"], timeout=60)["image_id"]


def warm(target, path, data):
    """Read the image once (filling the cache) and check it is the image."""
    code, headers, body = fetch(target.port, "GET", path)
    if code != 200 or body != data:
        raise RuntimeError("%s: GET %s answered %s (%d bytes)" % (target.name, path, code,
                                                                   len(body)))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", "-c", type=int, default=32)
    parser.add_argument("--targets", default="a,b,c,d",
                        help="which of a (bare), b (redis), c (embedded), d (no cache)")
    parser.add_argument("--baseline-tree", default=None, metavar="DIR",
                        help="also run (b) and (c) from the source tree DIR")
    parser.add_argument("--report", default=None, metavar="FILE",
                        help="append the headline figures to FILE (bench/all.py)")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--amqp-url", default=os.environ.get(
        "TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--serve-bare", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="127.0.0.1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or set(args.targets) - set("abcd"):
        parser.error("--targets takes a comma list of a, b, c, d")
    return args


def _terminate(signum, frame):
    signal.raise_signal(signal.SIGINT)  # SIGTERM cleans up as Ctrl-C does


def main(argv=None):
    args = parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.port, args.address, args.serve_bare)
    require_wrk("bench/reads.py")
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    run_id = uuid.uuid4().hex[:8]
    tmp = tempfile.mkdtemp(prefix="reads-bench-")
    services = {"b", "d"} & set(args.targets)
    pg_database = "photo_bench_%s" % run_id if services else None
    amqp_prefix = "photo_bench_%s." % run_id if services else None
    redis_prefix = "photo_bench_%s:" % run_id
    targets, helpers = [], []
    try:
        data = make_jpeg(IMAGE_BYTES)[0]
        image_path = os.path.join(tmp, "image.jpg")
        with open(image_path, "wb") as out:
            out.write(data)
        print("Cached reads: GET /api/images/{id}/content, a %d-byte JPEG" % len(data))
        print("load:    wrk -t1 -c%d, %d s per run after 1 s of warm-up, %d rounds; "
              "%d cores, load average %.2f %.2f %.2f"
              % ((args.connections, args.duration, args.rounds, os.cpu_count())
                 + os.getloadavg()))
        base_env = process_env()
        if "a" in args.targets:
            targets.append(Target("a", "(a) bare Tornado, bytes from memory",
                                  [os.path.abspath(__file__), "--serve-bare", image_path],
                                  dict(base_env)))
        web_env = {}
        if services:
            amqp_channel(args.amqp_url)[0].close()  # fail early if RabbitMQ is away
            admin = pg_admin(args.postgres_url)
            admin.cursor().execute("CREATE DATABASE %s" % pg_database)
            admin.close()
            database_url = urllib.parse.urlunsplit(urllib.parse.urlsplit(
                args.postgres_url)._replace(path="/" + pg_database))
            web_env = dict(base_env, DATABASE_URL=database_url, AMQP_URL=args.amqp_url,
                           AMQP_PREFIX=amqp_prefix)
        if "b" in args.targets:
            targets.append(Target("b", "(b) --role=web, Redis (a hit)", ["server.py", "--role=web"],
                                  dict(web_env, REDIS_URL=args.redis_url,
                                       CACHE_PREFIX=redis_prefix)))
        if "c" in args.targets:
            sqlite_path = os.path.join(tmp, "embedded.db")
            targets.append(Target("c", "(c) --role=all, embedded (a hit)",
                                  ["server.py", "--role=all"],
                                  dict(base_env, DATABASE_URL="sqlite:///" + sqlite_path),
                                  sqlite_path=sqlite_path))
        if "d" in args.targets:
            targets.append(Target("d", "(d) --role=web, no cache (PostgreSQL)",
                                  ["server.py", "--role=web"], dict(web_env, CACHE="none")))
        start_all(targets, args.baseline_tree, tmp)

        paths = {}
        if services:  # one image in the shared database, stored by a processor
            processor = Proc("processor", ["-m", "consumers.processor"], web_env,
                             pathlib.Path(tmp))
            helpers.append(processor)
            processor.wait_for_log(*RABBIT_READY, timeout=60)
            web = next(t for t in targets if t.key in ("b", "d"))
            image_id = store_image(web.port, data)
            processor.end()
        for target in targets:
            if target.key == "a":
                paths[target.key] = "/api/images/1/content"
            elif target.key.startswith("c"):  # each embedded server has its own database
                paths[target.key] = "/api/images/%d/content" % store_image(target.port, data)
            else:
                paths[target.key] = "/api/images/%d/content" % image_id
            warm(target, paths[target.key], data)
        print("servers: " + "; ".join("(%s) pid %d port %d" % (t.key, t.proc.pid, t.port)
                                      for t in targets))
        print()
        print("%-5s %-46s %10s %9s %10s  %s" % ("round", "target", "req/s", "p99 ms",
                                                 "CPU us/req", "notes"))
        for number in range(1, args.rounds + 1):
            for target in (targets if number % 2 else targets[::-1]):
                url = "http://127.0.0.1:%d%s" % (target.port, paths[target.key])
                wrk(url, 1, args.connections)
                cpu = process_cpu_seconds(target.proc.pid)
                rate, p99, count, bad, errors = read_url(url, args.duration, args.connections)
                cpu = 1e6 * (process_cpu_seconds(target.proc.pid) - cpu) / max(count, 1)
                target.rounds.append(Round(rate, p99, cpu))
                notes = ("non-2xx: %d" % bad if bad else "") + (" " + errors if errors else "")
                print("%-5d %-46s %10.0f %9.2f %10.0f  %s"
                      % (number, target.name, rate, p99, cpu, notes), flush=True)
                check_running(targets)

        medians = {}
        for target in targets:
            rates = [rate for rate, _, _ in target.rounds]
            medians[target.key] = target.rounds[rates.index(statistics.median_low(rates))]
        bare = medians.get("a", (None,))[0]
        print()
        print("Median round per target")
        print("%-46s %10s %9s %9s %12s %10s" % ("target", "req/s", "p99 ms", "vs (a)",
                                                "CPU us/req", "(a)/this"))
        cpu_per_request = {t.key: statistics.median([cpu for _, _, cpu in t.rounds])
                           for t in targets}
        bare_cpu = cpu_per_request.get("a")
        for target in targets:
            rate, p99, _ = medians[target.key]
            cpu = cpu_per_request[target.key]
            print("%-46s %10.0f %9.2f %9s %12.0f %10s"
                  % (target.name, rate, p99, "%.2f" % (rate / bare) if bare else "-", cpu,
                     "%.2f" % (bare_cpu / cpu) if bare_cpu else "-"))
        by_key = {target.key: target for target in targets}
        if "a" in by_key:
            print("\nHeadline ratios (the median over rounds of the ratio within each round):")
            for key, measure in (("b", "cached read, Redis configured / bare bytes handler"),
                                 ("c", "cached read, embedded / bare bytes handler")):
                if key in by_key:
                    value = paired_ratio(by_key[key], by_key["a"])
                    print("  %-52s %.2f  (rounds: %s)" % (measure, value, " ".join(
                        "%.2f" % (mine.rate / bare_round.rate) for mine, bare_round
                        in zip(by_key[key].rounds, by_key["a"].rounds))))
                    report(args.report, "reads", measure, round(value, 3),
                           ">= %.2f" % TARGET_RATIO if key == "b" else "")
        print("\nTarget: (b)/(a) >= %.2f (req/s).  Client and servers share the cores; "
              "compare ratios within one run.\nCPU us/req: the server process's CPU time "
              "(all threads) per request, median of the rounds;\n(a)/this: the same ratio "
              "by CPU per request, which a busy machine disturbs less." % TARGET_RATIO)

    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for helper in helpers:
            helper.end()
        forget_redis_keys(args.redis_url, redis_prefix)
        cleanup(targets, tmp, args, pg_database, amqp_prefix)
    return 0


def forget_redis_keys(redis_url, prefix):
    try:
        import redis
        client = redis.Redis.from_url(redis_url, socket_timeout=3)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
    except Exception as exc:
        print("cleanup: Redis keys %r*: %s" % (prefix, exc), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
