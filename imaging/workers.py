"""Image work off the IOLoop: worker processes (or threads) for ``imaging.process``.

``await workers.run(function, data, *args)`` runs ``function(data, *args)`` (the
processor passes ``imaging.process.process``) in one of ``IMAGE_WORKERS`` workers
and returns its ``ProcessedImage``.

``IMAGE_POOL=process`` (the default): worker processes, a
``concurrent.futures.ProcessPoolExecutor``, so the image work never holds this
process's interpreter lock, which the IOLoop needs to answer requests.  They are
forked by a fork server (``forkserver``: this process runs threads, and forking it
would be unsafe) that imported ``imaging.process`` once; they start when work first
comes.  Work is handed to the pool from a thread of this process, never the
IOLoop: starting a worker waits on the fork server (about 100 ms for the first).
The image's bytes go to a worker once, and what comes back is the result
without them when they are the stored original unchanged (the caller has them).
On Linux the bytes go through a memory file (``memfd_create``, written by that
thread, read by the worker through ``/proc/<pid>/fd``) rather than the pool's
pipe: two copies instead of four, no pickling of megabytes under this process's
interpreter lock, and a fifth of the CPU time (measured: 5 ms against 18 ms for
4.4 MB).  The file is closed when the worker is done with it (also when the
caller gave up waiting), never while a worker may still open it; where a worker
cannot read it, the pipe serves from then on.
A worker runs at the lowest CPU priority (``priority.py``: where they compete for a
core, the IOLoop and its helper threads get it), ignores SIGINT and SIGTERM (a
Ctrl-C or a service manager's stop signal reaches the whole process group: the
server decides what finishes) and ends when the server process ends, however it
ends.

A worker that dies (a crash in a decoder, the kernel's OOM killer) breaks its
pool: each call in flight raises ``BrokenProcessPool``, the pool is replaced, and
the caller handles the failure like any other (the processor retries the upload;
one that keeps killing workers is dead-lettered after ``MAX_ATTEMPTS``).

``IMAGE_POOL=thread``: threads of this process, the same calls (a test that
replaces ``function`` with a closure, which cannot be sent to a process, uses it).
"""

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import select
import signal
import threading
from concurrent.futures.process import BrokenProcessPool

from priority import helper_executor, lower_this_process

log = logging.getLogger(__name__)

# What the fork server imports once, for every worker it forks.
PRELOAD = ["imaging.process", "imaging.workers"]


class ImageWorkers:
    def __init__(self, count, kind="process"):
        self.count = count
        self.kind = kind
        self.memory_files = hasattr(os, "memfd_create")  # Linux
        self._pool = self._new_pool()

    def _new_pool(self):
        if self.kind == "thread":
            return helper_executor("image", self.count)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return concurrent.futures.ProcessPoolExecutor(
            self.count, mp_context=context, initializer=start_worker, initargs=(os.getpid(),))

    async def run(self, function, data, *args):
        """``function(data, *args)`` in a worker."""
        loop, pool = asyncio.get_running_loop(), self._pool
        if self.kind == "thread":
            return await loop.run_in_executor(pool, function, data, *args)
        try:
            result = await self._in_process(loop, pool, function, data, args)
        except BrokenProcessPool:
            self._replace(pool)
            raise
        if result.data is None:
            result.data = data
        return result

    async def _in_process(self, loop, pool, function, data, args):
        if self.memory_files:
            try:
                return await asyncio.wrap_future(await loop.run_in_executor(
                    None, _submit, pool, function, data, args, True))
            except MemoryFileUnreadable as exc:
                log.warning("image workers cannot read this process's memory files (%s); "
                            "the bytes go through the pipe from now on", exc)
                self.memory_files = False
        return await asyncio.wrap_future(await loop.run_in_executor(
            None, _submit, pool, function, data, args, False))

    def pids(self):
        """The process ids of the workers running now (none for threads)."""
        if self.kind == "thread":
            return []
        return list(self._pool._processes or ())

    def _replace(self, broken):
        if self._pool is broken:  # the first call to see it breaks replaces it
            log.error("an image worker process died (a crash, or killed); its pool is "
                      "replaced and the uploads it was working on are tried again")
            self._pool = self._new_pool()
            _end(broken, wait=False)

    def close(self):
        """Stop the workers at once: the server's shutdown gave up on what they
        still run (its messages went back to their queues)."""
        _end(self._pool, wait=True)


def _submit(pool, function, data, args, memory_file):
    """In a thread of this process: the pool's future of ``function(data, *args)``,
    the bytes handed over in a memory file when ``memory_file``, closed once the
    work is done (however the caller fares meanwhile)."""
    if not memory_file:
        return pool.submit(without_input, function, data, *args)
    handed = MemoryFile.of(data)
    try:
        done = pool.submit(without_input, function, handed, *args)
    except BaseException:
        handed.close()
        raise
    done.add_done_callback(lambda _: handed.close())
    return done


def _end(pool, wait):
    """Shut ``pool`` down, its worker processes killed first: they ignore SIGTERM,
    which is what ProcessPoolExecutor itself sends them (Python 3.14 has
    ``terminate_workers()``); its own thread then joins them."""
    for worker in list((getattr(pool, "_processes", None) or {}).values()):
        worker.kill()
    pool.shutdown(wait=wait, cancel_futures=True)


class MemoryFileUnreadable(Exception):
    """A worker could not open the server's memory file (no /proc, say)."""


class MemoryFile:
    """Bytes in a memory file of this process, for a worker to read (pickled: the
    pid and the descriptor, not the bytes)."""

    def __init__(self, fd):
        self.pid, self.fd = os.getpid(), fd

    @classmethod
    def of(cls, data):
        fd = os.memfd_create("photo-app-image", os.MFD_CLOEXEC)
        try:
            with memoryview(data) as view:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def read(self):
        """In the worker: the bytes (one copy, from the server's memory)."""
        try:
            with open("/proc/%d/fd/%d" % (self.pid, self.fd), "rb") as file:
                return file.read()
        except OSError as exc:
            raise MemoryFileUnreadable(str(exc)) from None

    def close(self):
        os.close(self.fd)


def without_input(function, data, *args):
    """In the worker: ``function``'s result, with ``data = None`` when it is the
    input itself (so the bytes do not travel back).  ``data`` may be a
    ``MemoryFile``, read here."""
    if isinstance(data, MemoryFile):
        data = data.read()
    result = function(data, *args)
    if result.data is data:
        result.data = None
    return result


def start_worker(server_pid):
    """A worker's first step: yield the CPU to the server's IOLoop (a lower priority:
    on a busy host requests are answered first, images made meanwhile), ignore the
    signals meant for the server, and end with it."""
    lower_this_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(server_pid,), name="end-with-server",
                     daemon=True).start()


def _end_with(pid):
    """Exit as soon as process ``pid`` has ended (SIGKILL included; Linux pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here: ended by the pool's shutdown only
        return
    select.select([pidfd], [], [])
    os._exit(1)
