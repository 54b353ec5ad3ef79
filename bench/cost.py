"""CPU seconds per stored image, every process together, and what one core of each sustains.

    .venv/bin/python bench/cost.py                       # 40 12-MP JPEGs, one round
    .venv/bin/python bench/cost.py --count 20 --rounds 3 --baseline-tree /tmp/before
    .venv/bin/python bench/cost.py --profile /tmp/cost-profile   # py-spy and perf, the drain

One processor (``server.py --role=processor``) runs against RabbitMQ and a
temporary PostgreSQL database.  Once it consumes (the upload queue has its
consumer), it is paused (SIGSTOP) while the bench publishes ``--count`` 12-MP
JPEGs of bench/processing.py's image set to the upload exchange (pika, the
message contract; each upload under its own nickname, so none is a duplicate);
then the bench reads the CPU time (utime + stime, /proc) of

  processor   its process and every descendant (with their ended children),
  PostgreSQL  the backends connected to the run's database (the processor's; the
              bench's own connection is left out), and the cluster's background
              processes (postmaster, checkpointer, background writer, walwriter...),
  RabbitMQ    beam.smp,

resumes the processor (SIGCONT), waits until every upload is stored and reads
the CPU times again: the cost of draining the queue.  What the broker spent
taking the uploads in (during the publish: what the web tier's publish costs it)
is shown beside it, outside the total.  The background processes and beam.smp
also serve every other client of the same servers.

It prints CPU seconds per stored image per component and their total, and a
capacity table: images per second one core of each component sustains (1 /
cost; the broker's with its intake), and how many processor cores one
PostgreSQL core and one RabbitMQ core can feed.  Figures only: nothing here asserts.  The database, the exchanges and
queues and the temp dir are removed at the end, also on an error or Ctrl-C.
"""

import argparse
import collections
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace

import pika
from common import ROOT, process_cpu_seconds, process_tree_cpu_seconds, report
from processing import load_set
from tests.processes import Proc, process_env
from upload_throughput import amqp_channel, amqp_topology, delete_amqp_objects, pg_admin

from broker import UPLOAD_ROUTING_KEY
from uploads import Upload

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET = 0.18
# What is measured (module docstring): the processor's process tree, the run database's
# PostgreSQL backends, the cluster's background processes, RabbitMQ's beam.smp.
COMPONENTS = ("processor", "pg_backends", "pg_background", "rabbitmq")


def beam_pid():
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/comm" % name) as comm:
                    if comm.read().strip() == "beam.smp":
                        return int(name)
            except OSError:
                pass
    raise RuntimeError("no beam.smp process: is RabbitMQ running on this machine?")


class PostgresProcesses:
    """The CPU time of the run database's backends and of the cluster's background
    processes, from a connection of the bench's own to that database."""

    def __init__(self, database_url):
        self.conn = pg_admin(database_url)
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.own = cursor.fetchone()[0]
        with open("/proc/%d/stat" % self.own) as stat:
            self.postmaster = int(stat.read().rsplit(")", 1)[1].split()[1])
        self.backends = {}  # pid -> last CPU seconds seen: a backend that ends keeps its figure

    def _select(self, query):
        with self.conn.cursor() as cursor:
            cursor.execute(query, (self.own,))
            return [row[0] for row in cursor.fetchall()]

    def sample(self):
        for pid in self._select("SELECT pid FROM pg_stat_activity WHERE datname = "
                                "current_database() AND pid <> %s"):
            seconds = process_cpu_seconds(pid)
            if seconds:
                self.backends[pid] = max(seconds, self.backends.get(pid, 0.0))

    def background_pids(self):
        """The postmaster and every process it runs that is not a client's backend."""
        return [self.postmaster] + self._select(
            "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend' "
            "AND pid <> %s")

    def background(self):
        """CPU seconds of ``background_pids`` (the postmaster's own: not its ended
        children, which are every client's backends)."""
        return sum(map(process_cpu_seconds, self.background_pids()))

    def wal_bytes(self):
        """Where the cluster's WAL stands, in bytes (every client's writes move it)."""
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn() - '0/0'")
            return int(cursor.fetchone()[0])

    def statuses(self):
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT status, count(*) FROM uploads GROUP BY status")
            return dict(cursor.fetchall())

    def close(self):
        self.conn.close()


class Disturbed(Exception):
    """A server this bench measures restarted under it (another user of the machine):
    the run is void and made again."""


@dataclass
class Run:
    tree: str
    images: int
    wall: float
    seconds: dict  # component -> CPU seconds over the drain
    intake: float  # RabbitMQ's CPU seconds taking the uploads in (before the drain)
    wal: int       # bytes of WAL the cluster wrote during the drain

    def per_image(self, component):
        return self.seconds[component] / self.images

    @property
    def total(self):
        return sum(self.seconds.values()) / self.images


def publish(prefix, uploads):
    connection, channel = amqp_channel(AMQP_URL)
    try:
        channel.confirm_delivery()
        exchange = amqp_topology(prefix).upload_exchange
        for upload in uploads:
            args = upload.publish_args()
            channel.basic_publish(exchange, UPLOAD_ROUTING_KEY, args["body"], pika.BasicProperties(
                message_id=args["message_id"], content_type=args["content_type"],
                headers=args["headers"], delivery_mode=2), mandatory=True)
    finally:
        connection.close()


def wait_consuming(prefix, proc, timeout=30):
    queue = amqp_topology(prefix).upload_queue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError("processor " + proc.describe())
        connection, channel = amqp_channel(AMQP_URL)
        try:
            if channel.queue_declare(queue, passive=True).method.consumer_count:
                return
        except Exception:
            pass  # not declared yet
        finally:
            if connection.is_open:
                connection.close()
        time.sleep(0.1)
    raise RuntimeError("the processor did not consume within %ss: %s" % (timeout, proc.describe()))


class Profilers:
    """py-spy on the processor (and its children) and perf on the whole machine, for
    the drain; the perf report is filtered afterwards to the PostgreSQL processes."""

    def __init__(self, directory, pid):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.spy_path = os.path.join(directory, "processor-py-spy.txt")
        self.perf_path = os.path.join(directory, "perf.data")
        py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        self.procs = [
            subprocess.Popen([py_spy, "record", "--pid", str(pid), "--subprocesses",
                              "--nonblocking", "--rate", "200", "--format", "raw",
                              "--output", self.spy_path], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL),
            subprocess.Popen(["perf", "record", "-a", "-F", "499", "-o", self.perf_path],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        time.sleep(1)  # both attached

    def stop(self):
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    def print_py_spy(self, top=18):
        own, total = collections.Counter(), 0
        with open(self.spy_path) as lines:
            for line in lines:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not count.isdigit():
                    continue
                leaf = stack.split(";")[-1]
                own[leaf.split(" (")[0] + " (" + leaf.rsplit("/", 1)[-1].split(":")[0]
                    .lstrip("(") + ")"] += int(count)
                total += int(count)
        print()
        print("processor, py-spy (%s): own samples by function, of %d" % (self.spy_path, total))
        for label, count in own.most_common(top):
            print("  %5.1f%%  %s" % (100 * count / total, label[:100]))

    def print_perf(self, pids, top=22):
        result = subprocess.run(["perf", "report", "-i", self.perf_path, "--stdio",
                                 "--pid=" + ",".join(map(str, pids)), "--sort", "dso,symbol",
                                 "--percentage", "relative"],
                                capture_output=True, text=True)
        rows = [line for line in result.stdout.splitlines()
                if line.strip() and not line.startswith("#")]
        print()
        print("PostgreSQL (the run's backends and the background processes), perf (%s):"
              % self.perf_path)
        for line in rows[:top]:
            print("  " + line.strip()[:110])


def drain(tree, uploads, prefix_base, tmp, profile=None):
    """One processor from ``tree`` drains ``uploads``; a Run, and the run's pids."""
    name = "%s_%s" % (prefix_base, uuid.uuid4().hex[:6])
    prefix = name + "."
    admin = pg_admin(PG_URL)
    admin.cursor().execute("CREATE DATABASE %s" % name)
    database_url = PG_URL.rsplit("/", 1)[0] + "/" + name
    proc = pg = profilers = None
    try:
        env = process_env(DATABASE_URL=database_url, AMQP_URL=AMQP_URL, AMQP_PREFIX=prefix,
                          CACHE="none", LOG_LEVEL="WARNING")
        proc = Proc("processor-%s" % name, [os.path.join(tree, "server.py"), "--role=processor"],
                    env, pathlib.Path(tmp))
        wait_consuming(prefix, proc)
        pg = PostgresProcesses(database_url)
        # One upload first, not counted: the processor's image workers start with its
        # first image (the fork server imports Pillow, then forks them), a cost paid
        # once per process; what is measured is the cost of each image after it.
        publish(prefix, [replace(uploads[0], request_id="warm-up-" + name,
                                 nickname="cost-warm-up")])
        wait_settled(pg, proc, 1)
        if profile:
            profilers = Profilers(profile, proc.pid)
        rabbit = beam_pid()
        # Paused while the uploads are published, so that it drains them from the queue
        # (as after a burst) and the broker's intake is measured apart.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            intake = process_cpu_seconds(rabbit)
            publish(prefix, uploads)
            intake = process_cpu_seconds(rabbit) - intake
            pg.sample()
            wal = pg.wal_bytes()
            start = {"processor": process_tree_cpu_seconds(proc.pid),
                     "pg_backends": dict(pg.backends), "pg_background": pg.background(),
                     "rabbitmq": process_cpu_seconds(rabbit)}
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        started = time.monotonic()
        statuses = wait_settled(pg, proc, 1 + len(uploads))
        seconds = {"processor": process_tree_cpu_seconds(proc.pid) - start["processor"],
                   "pg_backends": sum(v - start["pg_backends"].get(pid, 0.0)
                                      for pid, v in pg.backends.items()),
                   "pg_background": pg.background() - start["pg_background"],
                   "rabbitmq": process_cpu_seconds(rabbit) - start["rabbitmq"]}
        if beam_pid() != rabbit:
            raise Disturbed("RabbitMQ restarted during the drain")
        wall = time.monotonic() - started
        wal = pg.wal_bytes() - wal
        if profilers:
            profilers.stop()
            profilers.print_py_spy()
            profilers.print_perf(list(pg.backends) + pg.background_pids())
        if statuses.get("failed"):
            raise RuntimeError("%d upload(s) failed: %s" % (statuses["failed"], proc.log()[-3000:]))
        return Run(tree, statuses["stored"] - 1, wall, seconds, intake, wal)
    finally:
        if profilers:
            profilers.stop()
        if pg:
            pg.close()
        if proc:
            proc.end(40)
        admin.cursor().execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        admin.close()
        delete_amqp_objects(AMQP_URL, prefix)


def wait_settled(pg, proc, count, timeout=600):
    """Sample the run's backends until ``count`` uploads are stored or failed; the
    statuses then."""
    started = time.monotonic()
    while True:
        pg.sample()
        statuses = pg.statuses()
        if statuses.get("stored", 0) + statuses.get("failed", 0) >= count:
            return statuses
        if proc.popen.poll() is not None:
            raise RuntimeError("processor " + proc.describe())
        if time.monotonic() - started > timeout:
            raise RuntimeError("not drained after %d s: %s" % (timeout, statuses))
        time.sleep(0.05)


def drain_once(*args, tries=3):
    """``drain``, made again (up to ``tries`` times) when a server restarted under it."""
    for attempt in range(1, tries + 1):
        try:
            return drain(*args)
        except Disturbed as exc:
            print("(%s; running it again)" % exc, flush=True)
            if attempt == tries:
                raise


def the_uploads(count, seed, cache_root):
    images, _took, _source = load_set(seed, cache_root)
    photos = [image for image in images if image.kind.startswith("12 MP JPEG")]
    return [Upload("cost-%s-%d" % (uuid.uuid4().hex[:8], n), "cost-%d" % n, photo.name + ".jpg",
                   "image/jpeg", photo.data)
            for n, photo in ((n, photos[n % len(photos)]) for n in range(count))]


def print_runs(runs, trees):
    header = "%-22s %7s %6s %10s %10s %10s %10s %10s %12s %8s" % (
        "tree", "images", "wall s", "processor", "PG backend", "PG backgr.", "RabbitMQ",
        "total", "(RMQ intake)", "WAL MB")
    print(header)
    print("-" * len(header))
    for run in runs:
        print("%-22s %7d %6.1f %s %10.3f %12.3f %8.2f" % (
            trees[run.tree], run.images, run.wall,
            " ".join("%10.3f" % run.per_image(key) for key in COMPONENTS), run.total,
            run.intake / run.images, run.wal / run.images / 1e6), flush=True)
    print("-" * len(header))


def median_of(runs, key):
    if key == "total":
        return statistics.median(run.total for run in runs)
    if key == "intake":
        return statistics.median(run.intake / run.images for run in runs)
    return statistics.median(run.per_image(key) for run in runs)


def capacity(runs):
    cost = {key: median_of(runs, key) for key in COMPONENTS}
    postgres = cost["pg_backends"] + cost["pg_background"]
    rows = [("processor", cost["processor"]), ("PostgreSQL (backends + background)", postgres),
            ("RabbitMQ (intake + delivery)", cost["rabbitmq"] + median_of(runs, "intake"))]
    print()
    print("Capacity, from the median round (CPU-s per image -> what one core sustains)")
    header = "%-38s %14s %18s %22s" % ("component", "CPU-s / image", "images/s per core",
                                      "processor cores fed")
    print(header)
    print("-" * len(header))
    fed = {}
    for label, seconds in rows:
        fed[label] = cost["processor"] / seconds
        print("%-38s %14.3f %18.1f %22s" % (label, seconds, 1 / seconds,
                                            "" if label == "processor" else "%.1f" % fed[label]))
    print("-" * len(header))
    print("one PostgreSQL core feeds %.1f processor cores; one RabbitMQ core feeds %.1f"
          % (fed[rows[1][0]], fed[rows[2][0]]))
    return fed[rows[1][0]], fed[rows[2][0]]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=40, help="uploads per run (default 40)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per tree, trees alternating (default 1)")
    parser.add_argument("--baseline-tree", default=None, metavar="DIR",
                        help="also run the processor of another source tree, side by side")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="py-spy the processor and perf the machine during the (first) "
                             "drain, files in DIR; the CPU figures of that run include "
                             "the profilers' disturbance")
    parser.add_argument("--seed", type=int, default=20240, help="of bench/processing.py's set")
    parser.add_argument("--report", default=None, metavar="FILE",
                        help="append the headline figures to FILE (bench/all.py)")
    args = parser.parse_args(argv)
    if min(args.count, args.rounds) < 1:
        parser.error("--count and --rounds must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    tmp = tempfile.mkdtemp(prefix="photo-bench-cost-")
    try:
        uploads = the_uploads(args.count, args.seed,
                              os.path.join(tempfile.gettempdir(), "photo-app-bench-processing"))
        trees = {ROOT: "this tree"}
        if args.baseline_tree:
            trees[os.path.abspath(args.baseline_tree)] = "[%s]" % os.path.basename(
                os.path.abspath(args.baseline_tree))
        print("CPU cost per stored image: %d 12-MP JPEGs (%.1f MB each on average) through one "
              "processor,\nRabbitMQ + PostgreSQL; %d cores, load average %.2f %.2f %.2f"
              % (len(uploads), statistics.mean(len(u.data) for u in uploads) / 1e6,
                 os.cpu_count(), *os.getloadavg()))
        print("CPU seconds per stored image, over the drain (WAL MB: what the cluster wrote "
              "per image meanwhile):\n")
        runs = []
        prefix = "photo_bench_cost_%s" % uuid.uuid4().hex[:6]
        order = list(trees)
        for number in range(args.rounds):
            for tree in (order if number % 2 == 0 else order[::-1]):
                profile = args.profile if not runs else None
                run = drain_once(tree, uploads, prefix, tmp, profile)
                if profile:  # disturbed by the profilers: shown, not counted
                    print_runs([run], trees)
                    print("(that run was profiled; it is not counted)\n")
                    run = drain_once(tree, uploads, prefix, tmp)
                runs.append(run)
        print_runs(runs, trees)
        ours = [run for run in runs if run.tree == ROOT]
        print()
        print("median per image, this tree: %s; total %.3f (target <= %.2f%s)"
              % (", ".join("%s %.3f" % (key, median_of(ours, key)) for key in COMPONENTS),
                 median_of(ours, "total"), TARGET,
                 "" if median_of(ours, "total") <= TARGET else ", not met"))
        if args.baseline_tree:
            base = [run for run in runs if run.tree != ROOT]
            print("median per image, %s: %s; total %.3f; this tree / it: %.2f"
                  % (trees[base[0].tree], ", ".join("%s %.3f" % (key, median_of(base, key))
                                                     for key in COMPONENTS),
                     median_of(base, "total"), median_of(ours, "total") / median_of(base, "total")))
        postgres_feeds, rabbit_feeds = capacity(ours)
        report(args.report, "cost", "CPU-s per stored 12-MP image, all processes",
               round(median_of(ours, "total"), 3), "<= %.2f" % TARGET)
        report(args.report, "cost", "processor cores one PostgreSQL core feeds",
               round(postgres_feeds, 1), "")
        report(args.report, "cost", "processor cores one RabbitMQ core feeds",
               round(rabbit_feeds, 1), "")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
