"""Image processing speed, and how the web tier answers while the processor works.

    .venv/bin/python bench/processing.py [--count 20] [--rounds 5] [--burst 30] [--quick]
                                         [--sections a,b,c]

A. Throughput, images per second, on one generated set of photo-like images,
   single-threaded (per core) and with a pool of os.cpu_count() threads, for:

   (1) processor  imaging.process.process(data, settings), default settings
                  (ImagingSettings.from_config(config.Config())).
   (2) naive      what a straightforward Pillow implementation does: open, full
                  load() (no draft), ImageOps.exif_transpose, then per size a
                  copy of the full image thumbnail()ed, convert("RGB"), JPEG q85.
   (3) bare       the least that gives the same outputs: open, draft("RGB",
                  (1280, 1280)), thumbnail to 1280 (Pillow defaults), the EXIF
                  rotation applied to that thumbnail, JPEG q85; thumbnail of it
                  to 256, JPEG q85.  The library's own speed.

   Rounds interleave the pipelines (the order rotates every round); the summary
   is the median round.  Ratios (1)/(2) (target >= 2.5) and (1)/(3) (target
   >= 0.9) are per core (1 thread); --report gets both.
   Then the median time per image per kind of image, and where process() spends
   its time on the 12-MP JPEGs (cProfile, one thread).

B. Web responsiveness during a processing burst: server.py with every role on
   its embedded defaults (in-process broker, SQLite in a temp dir), one process.
   One small image is uploaded and read once (so its content is cached); GET
   /healthz and GET /api/images/{id}/content are timed while idle, then while a
   burst of --burst 12-MP JPEG uploads (from another thread of this process) is
   accepted and processed, until every one of them is stored.  Reported: each
   endpoint's burst p99 / idle p99 (target <= 3.0).  The probing thread runs at
   real-time priority (SCHED_FIFO, where permitted; --probe-priority=normal: not):
   it shares the cores with the server, and at normal priority its own waits for
   a core, behind the server's image workers until the kernel's next tick, were
   counted as the server's latency (processing-only /healthz p99, four rounds
   alternating: 4.63, 3.70, 4.10, 4.86 ms at normal priority; 3.14, 2.86, 2.33,
   2.60 ms at real-time).  --baseline-server-args runs
   the same first against a server with other arguments (--image-pool=thread:
   image work in threads of the server), side by side.

C. Formats: images per second through imaging.process (1 thread and the pool)
   for one 12-MP photo of the set as JPEG (q90), HEIC (pillow-heif, q90) and
   AVIF (Pillow, q90), the corpus's iPhone 13 Pro Max HEIC and an AVIF from the
   corpus, side by side.

The image set is generated once with a fixed seed and kept in
$TMPDIR/photo-app-bench-processing/ for later runs (--no-cache: generate into
the run's temp dir instead).  Figures only: nothing here asserts on time.
Everything started is stopped and removed on the way out, also on error, Ctrl-C
or SIGTERM: the server and the run's temp dir.
"""

import argparse
import cProfile
import concurrent.futures
import hashlib
import http.client
import io
import json
import math
import os
import platform
import pstats
import random
import shutil
import signal
import sqlite3
import statistics
import pathlib
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from common import ROOT, process_tree_cpu_seconds, report
from tests.helpers import multipart
from tests.processes import Proc, exchange, free_port, process_env, upload, wait_stored
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps  # noqa: E402

import config as app_config  # noqa: E402
from imaging.process import ImagingSettings, process  # noqa: E402

SETTINGS = ImagingSettings.from_config(app_config.Config())
SIZES = tuple(sorted(SETTINGS.thumbnail_sizes, reverse=True))  # (1280, 256)
LARGEST = SIZES[0]
ORIENTATION = 0x0112
GENERATOR_VERSION = 1  # bump when the generated set changes, so old caches are not used


# -- the image set ------------------------------------------------------------------

@dataclass
class SetImage:
    name: str
    kind: str        # the row it is reported under
    data: bytes
    width: int
    height: int

    @property
    def bits_per_pixel(self):
        return len(self.data) * 8 / (self.width * self.height)


# (name, kind, format, width, height, EXIF orientation, grain, mode)
SET_SPEC = [
    ("a-12mp", "12 MP JPEG", "JPEG", 4000, 3000, 1, 14, "RGB"),
    ("b-12mp-o6", "12 MP JPEG, orientation 6", "JPEG", 4000, 3000, 6, 16, "RGB"),
    ("c-12mp", "12 MP JPEG", "JPEG", 4000, 3000, 1, 18, "RGB"),
    ("d-12mp-o6", "12 MP JPEG, orientation 6", "JPEG", 4000, 3000, 6, 12, "RGB"),
    ("e-12mp", "12 MP JPEG", "JPEG", 4000, 3000, 1, 20, "RGB"),
    ("f-12mp", "12 MP JPEG", "JPEG", 4000, 3000, 1, 16, "RGB"),
    ("g-2mp", "2 MP JPEG", "JPEG", 1632, 1224, 1, 16, "RGB"),
    ("h-2mp-o6", "2 MP JPEG", "JPEG", 1632, 1224, 6, 16, "RGB"),
    ("i-2mp-png", "PNG", "PNG", 1600, 1200, 1, 6, "RGB"),
    ("j-png-alpha", "PNG", "PNG", 800, 600, 1, 6, "RGBA"),
]
JPEG_QUALITY = 90


def photo(width, height, seed, grain):
    """A photo-like RGB image: smooth colour fields at three scales, a sky-like
    gradient, soft-edged shapes and per-pixel grain of +-``grain``."""
    rng = random.Random(seed)

    def octave(cells):
        rows = max(2, cells * height // width)
        small = Image.frombytes("RGB", (cells, rows), rng.randbytes(cells * rows * 3))
        return small.resize((width, height), Image.Resampling.BICUBIC)

    sky = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    tint = tuple(rng.randrange(256) for _ in range(3))
    image = Image.composite(Image.new("RGB", (width, height), tint), octave(3), sky)
    image = Image.blend(image, octave(24), 0.35)
    image = Image.blend(image, octave(160), 0.15)
    shapes = image.copy()
    draw = ImageDraw.Draw(shapes)
    for _ in range(14):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(width // 50, width // 8)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + int(r * rng.uniform(0.4, 1.6))), fill=colour)
        else:
            draw.polygon([(x + rng.randint(-r, r), y + rng.randint(-r, r))
                          for _ in range(rng.randint(3, 6))], fill=colour)
    image = Image.blend(image, shapes, 0.7).filter(ImageFilter.GaussianBlur(2))
    noise = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    noise = noise.point([max(0, min(255, 128 + round((v - 128) * grain / 128)))
                         for v in range(256)])
    return ImageChops.add(image, Image.merge("RGB", (noise, noise, noise)), offset=-128)


def camera_exif(orientation, index):
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"                 # Make
    exif[0x0110] = "BenchCam X%d" % index     # Model
    if orientation != 1:
        exif[ORIENTATION] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:%02d 12:00:00" % (index + 1)  # DateTimeOriginal
    return exif


def render(spec, index, seed):
    name, kind, fmt, width, height, orientation, grain, mode = spec
    image = photo(width, height, seed * 1000 + index, grain)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, exif=camera_exif(orientation, index))
    else:
        if mode == "RGBA":
            alpha = Image.radial_gradient("L").resize((width, height))
            image.putalpha(ImageOps.invert(alpha))
        image.save(buffer, "PNG")
    return buffer.getvalue()


def load_set(seed, cache_root):
    """The generated set: (images, seconds spent generating, where it came from)."""
    key = hashlib.sha256(json.dumps([GENERATOR_VERSION, seed, JPEG_QUALITY, SET_SPEC])
                         .encode()).hexdigest()[:12]
    folder = os.path.join(cache_root, "set-%s" % key)
    names = ["%s.%s" % (spec[0], spec[2].lower()) for spec in SET_SPEC]
    started = time.perf_counter()
    if all(os.path.exists(os.path.join(folder, n)) for n in names):
        source = "reused from %s" % folder
        blobs = []
        for n in names:
            with open(os.path.join(folder, n), "rb") as f:
                blobs.append(f.read())
    else:
        blobs = [render(spec, index, seed) for index, spec in enumerate(SET_SPEC)]
        partial = folder + ".%s.partial" % uuid.uuid4().hex[:6]
        os.makedirs(partial)
        for n, blob in zip(names, blobs):
            with open(os.path.join(partial, n), "wb") as f:
                f.write(blob)
        try:
            os.rename(partial, folder)
        except OSError:  # another run got there first
            shutil.rmtree(partial, ignore_errors=True)
        source = "generated into %s" % folder
    images = [SetImage(spec[0], spec[1], blob, spec[3], spec[4])
              for spec, blob in zip(SET_SPEC, blobs)]
    return images, time.perf_counter() - started, source


# -- the three pipelines ----------------------------------------------------------

def run_processor(data):
    return [(t.width, t.height) for t in process(data, SETTINGS).thumbnails]


def run_naive(data):
    sizes = []
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        full = ImageOps.exif_transpose(image)
        for size in SIZES:
            thumb = full.copy()
            thumb.thumbnail((size, size))
            thumb = thumb.convert("RGB")
            buffer = io.BytesIO()
            thumb.save(buffer, "JPEG", quality=85)
            sizes.append(thumb.size)
    return sizes


# How to stand each EXIF orientation upright (as ImageOps.exif_transpose does).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def run_bare(data):
    sizes = []
    with Image.open(io.BytesIO(data)) as image:
        transpose = UPRIGHT.get(image.getexif().get(ORIENTATION, 1))
        image.draft("RGB", (LARGEST, LARGEST))
        image.thumbnail((LARGEST, LARGEST))  # Pillow's defaults: BICUBIC, reducing_gap 2.0
        thumb = image if image.mode == "RGB" else image.convert("RGB")
        if transpose is not None:  # on the thumbnail: the cheapest place for it
            thumb = thumb.transpose(transpose)
        for size in SIZES:
            thumb.thumbnail((size, size))
            buffer = io.BytesIO()
            thumb.save(buffer, "JPEG", quality=85)
            sizes.append(thumb.size)
    return sizes


PIPELINES = [("1", "(1) processor: imaging.process", run_processor),
             ("2", "(2) naive Pillow (full decode)", run_naive),
             ("3", "(3) bare Pillow (draft+thumbnail)", run_bare)]


# -- A: throughput --------------------------------------------------------------------

@dataclass
class Run:
    wall: float
    cpu: float
    count: int
    per_image: list = field(default_factory=list)  # (set index, seconds), 1 thread only

    @property
    def rate(self):
        return self.count / self.wall


def run_single(fn, items):
    per_image = []
    cpu, started = time.process_time(), time.perf_counter()
    for index, image in items:
        t = time.perf_counter()
        fn(image.data)
        per_image.append((index, time.perf_counter() - t))
    return Run(time.perf_counter() - started, time.process_time() - cpu, len(items), per_image)


def run_pool(pool, fn, items):
    cpu, started = time.process_time(), time.perf_counter()
    for _ in pool.map(fn, [image.data for _, image in items]):
        pass
    return Run(time.perf_counter() - started, time.process_time() - cpu, len(items))


def section_a(args, images, threads):
    items = [(i % len(images), images[i % len(images)]) for i in range(args.count)]
    print()
    print("A. Throughput: images/s, %d images per pipeline per run (the set cycled), "
          "%d rounds" % (args.count, args.rounds))
    # Warm-up over the whole set, once per pipeline, which also compares the outputs.
    outputs = {key: [fn(image.data) for image in images] for key, _name, fn in PIPELINES}
    mismatched = [image.name for i, image in enumerate(images)
                  if len({tuple(outputs[key][i]) for key in outputs}) != 1]
    print("outputs:     thumbnail sizes (w x h, largest first) %s across the pipelines%s"
          % ("identical" if not mismatched else "DIFFER",
             "" if not mismatched else " for " + ", ".join(mismatched)))
    print()
    header = "%-5s %-36s %12s %14s %9s %9s" % (
        "round", "pipeline", "1 thread/s", "pool(%d)/s" % threads, "speed-up", "pool CPU")
    print(header)
    print("-" * len(header))
    results = {key: {"single": [], "pool": []} for key, _n, _f in PIPELINES}
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="bench") as pool:
        for number in range(args.rounds):
            shift = number % len(PIPELINES)
            for key, name, fn in PIPELINES[shift:] + PIPELINES[:shift]:
                single = run_single(fn, items)
                pooled = run_pool(pool, fn, items)
                results[key]["single"].append(single)
                results[key]["pool"].append(pooled)
                print("%-5d %-36s %12.2f %14.2f %8.2fx %8.0f%%"
                      % (number + 1, name, single.rate, pooled.rate,
                         pooled.rate / single.rate, 100 * pooled.cpu / pooled.wall),
                      flush=True)
    print("-" * len(header))

    median = {key: {mode: statistics.median(r.rate for r in runs[mode]) for mode in runs}
              for key, runs in results.items()}
    print()
    print("Summary (median round)")
    header = "%-36s %16s %14s %9s %10s" % ("pipeline", "1 thread (/core)", "pool(%d)/s"
                                            % threads, "speed-up", "ms/image")
    print(header)
    print("-" * len(header))
    for key, name, _fn in PIPELINES:
        m = median[key]
        print("%-36s %14.2f/s %12.2f/s %8.2fx %10.1f"
              % (name, m["single"], m["pool"], m["pool"] / m["single"], 1000 / m["single"]))
    print("-" * len(header))
    for mode, label in (("single", "per core (1 thread)"), ("pool", "pool of %d" % threads)):
        r12 = median["1"][mode] / median["2"][mode]
        r13 = median["1"][mode] / median["3"][mode]
        print("ratios, %-20s (1)/(2) = %.2f (target >= 2.5%s)   (1)/(3) = %.2f "
              "(target >= 0.9%s)" % (label + ":", r12, "" if r12 >= 2.5 else ", not met",
                                     r13, "" if r13 >= 0.9 else ", not met"))
        if mode == "single":
            report(args.report, "processing", "processor / naive Pillow, images/s per core",
                   round(r12, 2), ">= 2.5")
            report(args.report, "processing", "processor / bare Pillow, images/s per core",
                   round(r13, 2), ">= 0.9")
    print("for scale: (3)/(2) = %.2f per core, %.2f with the pool: what the library itself "
          "gains over (2) on this set" % (median["3"]["single"] / median["2"]["single"],
                                          median["3"]["pool"] / median["2"]["pool"]))

    # Per kind of image, from the 1-thread runs of every round.
    print()
    print("Median ms per image by kind (1 thread, all rounds)")
    kinds = list(dict.fromkeys(image.kind for image in images))
    header = "%-28s %6s %7s %12s %12s %12s %9s %9s" % (
        "kind", "images", "bpp", "(1) proc", "(2) naive", "(3) bare", "(1)/(2)", "(1)/(3)")
    print(header)
    print("-" * len(header))
    for kind in kinds:
        members = [i for i, image in enumerate(images) if image.kind == kind]
        ms = {}
        for key in results:
            times = [t for run in results[key]["single"] for i, t in run.per_image
                     if i in members]
            ms[key] = 1000 * statistics.median(times) if times else float("nan")
        bpp = statistics.mean(images[i].bits_per_pixel for i in members)
        print("%-28s %6d %7.2f %12.1f %12.1f %12.1f %9.2f %9.2f"
              % (kind, len(members), bpp, ms["1"], ms["2"], ms["3"],
                 ms["2"] / ms["1"], ms["3"] / ms["1"]))
    print("-" * len(header))
    print("(1)/(2) and (1)/(3) here are speed ratios (time of the other / time of (1)).")
    return median


def profile_processor(images, passes=2):
    """Where process() spends its time on the 12-MP JPEGs: cProfile, one thread."""
    targets = [image for image in images if image.width * image.height >= 10_000_000
               and image.data[:3] == b"\xff\xd8\xff"]
    if not targets:
        return
    profiler = cProfile.Profile()
    count = 0
    started = time.perf_counter()
    profiler.enable()
    for _ in range(passes):
        for image in targets:
            process(image.data, SETTINGS)
            count += 1
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, func), (_cc, calls, tottime, _cum, _callers) in stats.stats.items():
        if filename == "~":
            label = func.strip("<>")
        else:
            if "site-packages" + os.sep in filename:
                filename = filename.split("site-packages" + os.sep, 1)[1]
            elif filename.startswith(ROOT):
                filename = os.path.relpath(filename, ROOT)
            label = "%s:%d %s" % (filename, line, func)
        rows.append((tottime, calls, label))
    rows.sort(reverse=True)
    print()
    print("Where process() spends its time: cProfile, 1 thread, the %d 12-MP JPEGs x %d "
          "(%.1f ms/image under the profiler)" % (len(targets), passes, 1000 * wall / count))
    header = "%10s %7s %8s  %s" % ("ms/image", "share", "calls/im", "function (own time)")
    print(header)
    print("-" * 78)
    total = sum(r[0] for r in rows)
    for tottime, calls, label in rows[:12]:
        print("%10.1f %6.1f%% %8.1f  %s" % (1000 * tottime / count, 100 * tottime / total,
                                            calls / count, label[:60]))
    print("-" * 78)


# -- C: JPEG beside HEIC and AVIF ----------------------------------------------------------

CORPUS = os.path.join(ROOT, "tests", "corpus")


def format_set(images):
    """(label, bytes) per row of C: one 12-MP photo in three formats, and real files."""
    photo_12mp = next(image for image in images if image.name == "a-12mp")
    with Image.open(io.BytesIO(photo_12mp.data)) as image:
        image.load()
        encoded = []
        for label, fmt in (("12 MP JPEG q90 (generated)", None),
                           ("12 MP HEIC q90 (generated)", "HEIF"),
                           ("12 MP AVIF q90 (generated)", "AVIF")):
            if fmt is None:
                encoded.append((label, photo_12mp.data))
                continue
            buffer = io.BytesIO()
            image.save(buffer, fmt, quality=90, **({"speed": 8} if fmt == "AVIF" else {}))
            encoded.append((label, buffer.getvalue()))
    for label, path in (("iPhone 13 Pro Max HEIC, 12 MP", "heif/iphone_13_pro_max.heic"),
                        ("AVIF 640x427 (Pillow's rot3mir1)", "avif/rot3mir1.avif"),
                        ("camera JPEG 100x66 (Nikon D70)", "cameras/Nikon_D70.jpg")):
        with open(os.path.join(CORPUS, path), "rb") as f:
            encoded.append((label, f.read()))
    return encoded


def section_c(args, images, threads):
    started = time.perf_counter()
    rows = format_set(images)
    count = max(4, args.count // 4)
    print()
    print("C. Formats: images/s through imaging.process, %d images per run, %d rounds "
          "(median); encoding took %.1f s" % (count, args.rounds, time.perf_counter() - started))
    header = "%-36s %8s %12s %14s %10s" % ("file", "MB", "1 thread/s", "pool(%d)/s" % threads,
                                            "ms/image")
    print(header)
    print("-" * len(header))
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="bench") as pool:
        for label, data in rows:
            run_processor(data)  # warm-up, and a check that it is stored
            items = [(0, SetImage(label, label, data, 1, 1))] * count
            single = statistics.median(run_single(run_processor, items).rate
                                       for _ in range(args.rounds))
            pooled = statistics.median(run_pool(pool, run_processor, items).rate
                                       for _ in range(args.rounds))
            print("%-36s %8.2f %12.2f %14.2f %10.1f" % (label, len(data) / 1e6, single,
                                                        pooled, 1000 / single), flush=True)
    print("-" * len(header))


# -- B: web responsiveness during a burst ------------------------------------------------

class Server:
    """server.py on the embedded defaults, SQLite in ``tmp``."""

    def __init__(self, tmp, log_level, extra_args=()):
        self.port = free_port()
        self.db_path = os.path.join(tmp, "photo-app.db")
        env = process_env(SQLITE_DB_PATH=self.db_path,
                          **({"LOG_LEVEL": log_level} if log_level else {}))
        self.args = ["server.py", "--port", str(self.port), "--address", "127.0.0.1",
                     *extra_args]
        self.proc = Proc("server", self.args, env, pathlib.Path(tmp))

    def wait_ready(self, timeout=60):
        self.proc.wait_ready(self.port, timeout)

    def check(self):
        if self.proc.popen.poll() is not None:
            raise RuntimeError("server " + self.proc.describe())

    def cpu_seconds(self):
        return process_tree_cpu_seconds(self.proc.pid)  # its image workers too

    def stop(self, timeout=40):
        self.proc.end(timeout)

    def statuses(self, request_ids):
        """{status: count} of these uploads, read from the server's SQLite."""
        conn = sqlite3.connect("file:%s?mode=ro" % self.db_path, uri=True, timeout=5)
        try:
            counts = {}
            ids = list(request_ids)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for status, n in conn.execute(
                        "SELECT status, count(*) FROM uploads WHERE request_id IN (%s) "
                        "GROUP BY status" % ",".join("?" * len(chunk)), chunk):
                    counts[status] = counts.get(status, 0) + n
            return counts
        finally:
            conn.close()


def upload_and_wait(port, nickname, data, timeout=60):
    """Upload one image and wait until it is stored; its image id."""
    status, answer = upload(port, data, nickname, "probe.jpg")
    if status != 202:
        raise RuntimeError("upload answered %s: %s" % (status, answer))
    return wait_stored(port, answer["request_id"], timeout)["image_id"]


class Prober:
    """Sequential keep-alive GETs, paced: one request every ``interval`` seconds,
    the endpoints taking turns (a late answer is not made up for with a burst).

    ``realtime``: the probing thread runs at real-time priority (SCHED_FIFO 1)
    while it probes, where the system lets it, so that its own waits for a core
    (it shares the machine's cores with the server and its image workers) are not
    counted as the server's latency; ``self.priority`` says what it ran at."""

    def __init__(self, port, paths, interval, realtime=True):
        self.port = port
        self.paths = paths
        self.interval = interval
        self.realtime = realtime
        self.priority = "normal"
        self.conn = None
        self.turn = 0

    def _raise_priority(self):
        if not self.realtime:
            return False
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except (AttributeError, OSError) as exc:  # not Linux, or not permitted
            self.priority = "normal (SCHED_FIFO refused: %s)" % exc
            return False
        self.priority = "real-time (SCHED_FIFO 1)"
        return True

    def one(self, path):
        started = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            response.read()
            status = response.status
            if response.will_close:
                self.conn.close()
                self.conn = None
        except (OSError, http.client.HTTPException) as exc:
            status = "error:%s" % type(exc).__name__
            if self.conn is not None:
                self.conn.close()
            self.conn = None
        return started, time.perf_counter() - started, status

    def run(self, until):
        """{path: [(started, seconds, status)]} until ``until()`` is true."""
        samples = {path: [] for path in self.paths}
        raised = self._raise_priority()
        try:
            next_at = time.perf_counter()
            while not until(samples):
                now = time.perf_counter()
                if now < next_at:
                    time.sleep(next_at - now)
                next_at = max(next_at + self.interval, time.perf_counter())
                path = self.paths[self.turn % len(self.paths)]
                self.turn += 1
                samples[path].append(self.one(path))
            return samples
        finally:
            if raised:  # back to normal: threads started later would inherit it
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    def close(self):
        if self.conn is not None:
            self.conn.close()


class Burst(threading.Thread):
    """Send the uploads one after the other, then poll until all are settled."""

    def __init__(self, server, bodies, timeout):
        super().__init__(name="burst", daemon=True)
        self.server = server
        self.bodies = bodies
        self.timeout = timeout
        self.request_ids = []
        self.refused = {}
        self.started = self.accepted_at = self.settled_at = None
        self.statuses = {}
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            self.started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
            try:
                for content_type, body in self.bodies:
                    if self.stop.is_set():
                        return
                    status, _headers, answer = exchange(conn, "POST", "/api/images", body,
                                                        {"Content-Type": content_type})
                    if status == 202:
                        self.request_ids.append(json.loads(answer)["request_id"])
                    else:
                        self.refused[status] = self.refused.get(status, 0) + 1
            finally:
                conn.close()
            self.accepted_at = time.perf_counter()
            while not self.stop.is_set():
                self.statuses = self.server.statuses(self.request_ids)
                if sum(self.statuses.get(s, 0) for s in ("stored", "failed")) \
                        >= len(self.request_ids):
                    self.settled_at = time.perf_counter()
                    return
                if time.perf_counter() - self.started > self.timeout:
                    return
                time.sleep(0.1)
        except Exception as exc:  # reported by the main thread
            self.error = exc


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency_cells(samples):
    ok = [s for _t, s, status in samples if status == 200]
    return (len(samples), len(samples) - len(ok), 1000 * percentile(ok, 50),
            1000 * percentile(ok, 99), 1000 * max(ok) if ok else float("nan"))


def section_b(args, images, tmp, servers, server_args, label=""):
    """One burst against one server; returns {path: burst p99 / idle p99}."""
    print()
    print("B. Web responsiveness during a processing burst%s" % label)
    directory = os.path.join(tmp, "b%d" % len(servers))
    os.makedirs(directory)
    server = Server(directory, args.log_level, server_args.split())
    servers.append(server)  # stopped by main(), also on error or Ctrl-C
    server.wait_ready()
    probe_image = photo(800, 600, args.seed * 1000 + 999, 12)
    buffer = io.BytesIO()
    probe_image.save(buffer, "JPEG", quality=85)
    image_id = upload_and_wait(server.port, "probe", buffer.getvalue())
    paths = ["/healthz", "/api/images/%d/content" % image_id]
    prober = Prober(server.port, paths, args.probe_interval,
                    realtime=args.probe_priority == "realtime")
    for path in paths:  # the first read puts the content in the cache
        prober.one(path)
    big = [image for image in images if image.width * image.height >= 10_000_000
           and image.data[:3] == b"\xff\xd8\xff"]
    bodies = [multipart({"nickname": "burst-%d" % i},
                        {"image_data": ("burst-%d.jpg" % i, big[i % len(big)].data)})
              for i in range(args.burst)]
    print("server:      pid %d: %s (every role, in-process broker, SQLite in a temp dir)"
          % (server.proc.pid, " ".join(server.args)))
    print("probes:      GET %s and GET %s (the %d-byte probe image, cached), sequential "
          "on one keep-alive connection, one request every %.1f ms, endpoints taking "
          "turns" % (paths[0], paths[1], len(buffer.getvalue()), 1000 * args.probe_interval))
    print("burst:       %d uploads of the set's %d distinct 12-MP JPEGs (%.1f MB on "
          "average), sent one after the other from another thread; distinct nicknames"
          % (args.burst, len(big), statistics.mean(len(i.data) for i in big) / 1e6))

    cpu, wall = server.cpu_seconds(), time.perf_counter()
    idle = prober.run(lambda s: min(len(v) for v in s.values()) >= args.idle_requests)
    print("probe client: %s priority while it probes (--probe-priority)" % prober.priority)
    idle_cpu = (server.cpu_seconds() - cpu) / (time.perf_counter() - wall)

    burst = Burst(server, bodies, args.burst_timeout)
    cpu = server.cpu_seconds()
    burst.start()
    try:
        during = prober.run(lambda s: not burst.is_alive())
    finally:
        burst.stop.set()
        burst.join(10)
        prober.close()
    burst_wall = time.perf_counter() - burst.started
    burst_cpu = (server.cpu_seconds() - cpu) / burst_wall
    server.check()
    if burst.error:
        raise burst.error

    print()
    header = "%-28s %-24s %6s %6s %9s %9s %9s" % (
        "endpoint", "phase", "n", "errors", "p50 ms", "p99 ms", "max ms")
    print(header)
    print("-" * len(header))
    accepted_at = burst.accepted_at or float("inf")
    ratios = {}
    for path in paths:
        rows = [("idle", idle[path]),
                ("burst (all)", during[path]),
                ("  while uploads arrive", [s for s in during[path] if s[0] < accepted_at]),
                ("  processing only", [s for s in during[path] if s[0] >= accepted_at])]
        for phase, samples in rows:
            print("%-28s %-24s %6d %6d %9.2f %9.2f %9.2f"
                  % ((path if phase == "idle" else "",
                      phase) + latency_cells(samples)))
        idle_cells, burst_cells = latency_cells(idle[path]), latency_cells(during[path])
        ratios[path] = burst_cells[3] / idle_cells[3]
        print("%-28s %-24s %6s %6s %8.1fx %8.1fx" % (
            "", "burst / idle", "", "", burst_cells[2] / idle_cells[2],
            burst_cells[3] / idle_cells[3]))
    print("-" * len(header))
    stored = burst.statuses.get("stored", 0)
    if burst.settled_at is not None:
        took = burst.settled_at - burst.started
        print("burst:       %d uploads answered 202 in %.1f s; all settled (%s) %.1f s "
              "after the first was sent: %.2f images/s"
              % (len(burst.request_ids), burst.accepted_at - burst.started,
                 ", ".join("%s %d" % kv for kv in sorted(burst.statuses.items())),
                 took, stored / took))
    else:
        print("burst:       NOT settled within %.0f s: %s" % (
            args.burst_timeout, burst.statuses))
    if burst.refused:
        print("             refused uploads: %s" % burst.refused)
    print("server CPU:  idle %.0f%%, during the burst %.0f%% (all threads and image workers; "
          "%d cores)" % (100 * idle_cpu, 100 * burst_cpu, os.cpu_count()))
    server.stop()
    return ratios


# -- main ------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=None,
                        help="images per pipeline per run (default 20; --quick 10)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds over the pipelines, order rotating (default 5; --quick 2)")
    parser.add_argument("--burst", type=int, default=None,
                        help="12-MP uploads in the burst of B (default 30; --quick 10)")
    parser.add_argument("--idle-requests", type=int, default=None,
                        help="idle probes per endpoint in B (default 300; --quick 100)")
    parser.add_argument("--quick", action="store_true", help="a short run: smaller defaults")
    parser.add_argument("--sections", default="a,b,c", help="which of a, b, c to run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="pool size in A (default os.cpu_count())")
    parser.add_argument("--probe-interval", type=float, default=0.005,
                        help="seconds between probe requests in B (default 0.005)")
    parser.add_argument("--probe-priority", choices=("realtime", "normal"), default="realtime",
                        help="the probe client's CPU priority in B (default realtime: "
                             "SCHED_FIFO where permitted, else normal)")
    parser.add_argument("--burst-timeout", type=float, default=600.0,
                        help="seconds the burst may take to be stored")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the cProfile breakdown of process()")
    parser.add_argument("--seed", type=int, default=20240)
    parser.add_argument("--no-cache", action="store_true",
                        help="generate the image set into the run's temp dir (removed)")
    parser.add_argument("--server-args", default="",
                        help="more arguments for server.py in B, e.g. '--image-workers=1'")
    parser.add_argument("--baseline-server-args", default=None, metavar="ARGS",
                        help="run B first against a server with these arguments instead "
                             "(e.g. '--image-pool=thread'), side by side with --server-args")
    parser.add_argument("--report", default=None, metavar="FILE",
                        help="append the headline figures to FILE (bench/all.py)")
    parser.add_argument("--log-level", default=None,
                        help="LOG_LEVEL of the server in B (default: the app's, INFO, to a "
                             "file in the temp dir)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, normal, short in (("count", 20, 10), ("rounds", 5, 2), ("burst", 30, 10),
                                ("idle_requests", 300, 100)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else normal)
    args.sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not args.sections or args.sections - {"a", "b", "c"}:
        parser.error("--sections takes a comma list of a, b, c")
    if min(args.count, args.rounds, args.burst, args.idle_requests, args.threads) < 1:
        parser.error("--count, --rounds, --burst, --idle-requests and --threads must be "
                     "positive")
    return args


def _terminate(signum, frame):
    signal.raise_signal(signal.SIGINT)


def main(argv=None):
    args = parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. started with nohup or &
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    tmp = tempfile.mkdtemp(prefix="processing-bench-")
    servers = []
    failed = False
    try:
        import PIL
        import pillow_heif
        from PIL import features
        cores = os.cpu_count()
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
        print("Image processing: throughput, and web latency during a processing burst")
        print("command:     %s" % " ".join([os.path.relpath(sys.executable, ROOT),
                                            os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)]
                                           + sys.argv[1:]))
        print("machine:     %d cores (os.cpu_count), %d usable by this process; load average "
              "%.2f %.2f %.2f" % ((cores, usable) + os.getloadavg()))
        print("software:    Python %s, Pillow %s (libjpeg-turbo %s, libavif %s), "
              "pillow-heif %s (libheif %s), %s"
              % (platform.python_version(), PIL.__version__, features.version("jpg"),
                 features.version("avif"), pillow_heif.__version__,
                 pillow_heif.libheif_version(), platform.platform()))
        print("settings:    thumbnails %s, %s q%d (config.Config() defaults)"
              % (", ".join(map(str, SIZES)), SETTINGS.thumbnail_format,
                 SETTINGS.thumbnail_quality))
        cache_root = tmp if args.no_cache else os.path.join(tempfile.gettempdir(),
                                                            "photo-app-bench-processing")
        images, took, source = load_set(args.seed, cache_root)
        print("image set:   %d images, seed %d, %s in %.1f s:" % (len(images), args.seed,
                                                                  source, took))
        for image in images:
            print("             %-12s %-26s %4dx%-4d %5.2f MB %5.2f bits/pixel"
                  % (image.name, image.kind, image.width, image.height, len(image.data) / 1e6,
                     image.bits_per_pixel))
        sys.stdout.flush()
        if "a" in args.sections:
            section_a(args, images, args.threads)
            if not args.no_profile:
                profile_processor(images)
        if "b" in args.sections:
            runs = [("", args.server_args)]
            if args.baseline_server_args is not None:
                runs.insert(0, (" [baseline: server.py %s]" % args.baseline_server_args,
                                args.baseline_server_args))
            results = [(label, section_b(args, images, tmp, servers, server_args, label))
                       for label, server_args in runs]
            if len(results) > 1:
                print()
                print("B side by side: burst p99 / idle p99")
                for label, ratios in results:
                    print("  %-44s %s" % (label.strip(" []") or "this tree",
                                          "   ".join("%s %.1fx" % kv for kv in ratios.items())))
            ratios = results[-1][1]
            report(args.report, "processing", "/healthz p99, burst of 12 MP uploads / idle "
                   "(--role=all, embedded)", round(ratios["/healthz"], 2), "<= 3.0")
            [content] = [path for path in ratios if path != "/healthz"]
            report(args.report, "processing", "cached content read p99, burst / idle "
                   "(--role=all, embedded)", round(ratios[content], 2), "<= 3.0")
        if "c" in args.sections:
            section_c(args, images, args.threads)
        print()
        print("Notes: figures only; the machine is shared, so compare ratios within one run. "
              "In A\nthe bench is the only load it adds; in B the probe client and the "
              "uploader run in this\nprocess and share the %d cores with the server "
              "(the prober at the priority it printed)." % cores)
    except KeyboardInterrupt:
        failed = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    except Exception:
        failed = True
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in servers:
            try:
                server.stop()
            except Exception as exc:
                print("cleanup: stopping the server: %s" % exc, file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return 130 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
