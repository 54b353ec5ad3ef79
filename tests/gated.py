"""The app as a child process with its image processing held at a gate the test controls.

    python -m tests.gated GATE_DIR [server.py arguments]

Each call of the processor's image work first writes a line to ``GATE_DIR/entered``,
then waits until ``GATE_DIR/open`` holds a number at least as large as its own turn
(1, 2, 3 ... in the order the calls arrive).  So a test decides exactly how many
uploads get processed, and can see the next one waiting, whatever the speed of the
machine: work "in flight" is held there, not hoped for.

The test side is ``Gate``: ``Gate(directory)``, ``gate.command(*args)`` for the
``spawn`` fixture, ``gate.allow(n)`` / ``gate.open()``, ``gate.wait_entered(n)``.
"""

import itertools
import os
import sys
import threading
import time

OPEN_ALL = 10 ** 9
POLL = 0.01


class Gate:
    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.allow(0)

    def command(self, *server_args):
        """The arguments after ``python`` that start the gated app."""
        return ["-m", "tests.gated", str(self.directory), *server_args]

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


def install(directory):
    """Wrap the processor's image work so that each call waits for its turn."""
    import consumers.processor as processor_module
    real = processor_module.process
    turns, lock = itertools.count(1), threading.Lock()

    def gated(*args, **kwargs):
        with lock:
            turn = next(turns)
            with open(os.path.join(directory, "entered"), "a") as entered:
                entered.write("%d\n" % turn)
        while _allowed(directory) < turn:
            time.sleep(POLL)
        return real(*args, **kwargs)
    processor_module.process = gated


if __name__ == "__main__":
    install(sys.argv[1])
    import server
    server.main(sys.argv[2:])
