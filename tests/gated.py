"""The app as a child process with parts of its work held at gates the test controls.

    python -m tests.gated POINT=GATE_DIR ... [server.py arguments]

A gate holds the calls of one point of the code (``POINTS``; ``images``, the
processor's image work, unless said otherwise).  Each call first writes a line to
``GATE_DIR/entered``, then waits until ``GATE_DIR/open`` holds a number at least as
large as its own turn (1, 2, 3 ... in the order the calls arrive).  So a test decides
exactly how many uploads get processed, and can see the next one waiting, whatever
the speed of the machine: work "in flight" is held there, not hoped for.  The image
work's gate travels with the call into the image worker process (``Held`` pickles;
the turns are counted in the file, under a lock), so it holds the work where it runs.

The test side is ``Gate``: ``Gate(directory, point)``, ``gate.command(*args)`` for
the ``spawn`` fixture (``also=`` more gates in the same process), ``gate.allow(n)`` /
``gate.open()``, ``gate.wait_entered(n)``.
"""

import asyncio
import fcntl
import importlib
import os
import sys
import time

OPEN_ALL = 10 ** 9
POLL = 0.01

# Where a gate can hold calls: (module, function or Class.method, which calls it
# holds: a test of the call's arguments, None for every call).
POINTS = {
    # The processor's image work, in its image worker (a process, or a thread).
    "images": ("consumers.processor", "process", None),
    # An upload whose body was read, before it is published (nothing of it is recorded
    # before): the in-process broker's publishes of uploads.
    "uploads": ("broker.memory", "MemoryBroker.publish",
                lambda _broker, _exchange, routing_key, *args, **kwargs:
                routing_key == "image-processing-queue"),
    # The processor's image.uploaded events: an upload stored, its message not yet acked.
    "uploaded": ("consumers.processor", "Processor.publish_event",
                 lambda _consumer, event, *args, **kwargs: event == "image.uploaded"),
}


class Gate:
    def __init__(self, directory, point="images"):
        self.directory = directory
        self.point = point
        os.makedirs(directory, exist_ok=True)
        self.allow(0)

    def command(self, *server_args, also=()):
        """The arguments after ``python`` that start the app gated here (and at ``also``)."""
        return ["-m", "tests.gated", *("%s=%s" % (gate.point, gate.directory)
                                       for gate in (self, *also)), *server_args]

    def allow(self, count):
        """Let the first ``count`` calls through (in total, not more)."""
        path = os.path.join(self.directory, "open")
        with open(path + ".new", "w") as out:
            out.write(str(count))
        os.replace(path + ".new", path)  # the child never reads a half-written number

    def open(self):
        self.allow(OPEN_ALL)

    def entered(self):
        """How many calls have reached the gate (passed or waiting)."""
        try:
            with open(os.path.join(self.directory, "entered")) as lines:
                return sum(1 for _ in lines)
        except FileNotFoundError:
            return 0

    def wait_entered(self, count, timeout=30):
        from tests.processes import wait_until
        wait_until(lambda: self.entered() >= count, timeout,
                   lambda: "%d call(s) reached the gate, not %d" % (self.entered(), count))


def _allowed(directory):
    try:
        with open(os.path.join(directory, "open")) as number:
            return int(number.read() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def take_turn(directory):
    """Append this call's turn to ``entered`` and return it (1, 2, 3 ...), in any
    process: the file is the count, locked while it is read and written."""
    with open(os.path.join(directory, "entered"), "a+") as entered:
        fcntl.flock(entered, fcntl.LOCK_EX)
        entered.seek(0)
        turn = sum(1 for _ in entered) + 1
        entered.write("%d\n" % turn)
    return turn


class Held:
    """``real`` held at the gate in ``directory``; picklable (with ``holds`` None or
    a module-level function), so it runs in an image worker process too."""

    def __init__(self, real, directory, holds):
        self.real, self.directory, self.holds = real, directory, holds

    def __call__(self, *args, **kwargs):
        if self.holds is None or self.holds(*args, **kwargs):
            turn = take_turn(self.directory)
            while _allowed(self.directory) < turn:
                time.sleep(POLL)
        return self.real(*args, **kwargs)


def install(point, directory):
    """Wrap the function at ``point`` so that each call waits for its turn."""
    module, path, holds = POINTS[point]
    *owner_path, name = path.split(".")
    owner = importlib.import_module(module)
    for attribute in owner_path:
        owner = getattr(owner, attribute)
    real = getattr(owner, name)

    async def gated_coroutine(*args, **kwargs):
        if holds is None or holds(*args, **kwargs):
            turn = take_turn(directory)
            while _allowed(directory) < turn:
                await asyncio.sleep(POLL)
        return await real(*args, **kwargs)
    setattr(owner, name, gated_coroutine if asyncio.iscoroutinefunction(real)
            else Held(real, directory, holds))


if __name__ == "__main__":
    # This module by its own name: a ``Held`` is pickled as ``tests.gated.Held``.
    import tests.gated as gated
    args = sys.argv[1:]
    while args and args[0].split("=", 1)[0] in gated.POINTS:
        gated.install(*args.pop(0).split("=", 1))
    import server
    server.main(args)
