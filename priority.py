"""CPU priorities: the IOLoop's thread first, the threads that work for it next, the
image workers last; and the interpreter lock handed over promptly.

The IOLoop's thread answers every request this process serves, so it keeps the
process's own priority.  The threads that make the blocking calls for it (the
storage's, the in-process broker's, the default executor's) run ``HELPER_NICENESS``
below it, and the image workers at ``WORKER_NICENESS``, the lowest there is.  Where
every core is busy (a burst of uploads being stored and processed), the kernel then
gives the IOLoop a core when it wakes, instead of keeping it waiting behind a
storage thread's write or an image decode at the same priority.  Measured with
``perf sched`` during a burst (bench/processing.py, part B; two rounds, alternating
with the tree before): the IOLoop's waits of over 2 ms for a core went from 112 and
59 to 67 and 28; the storage and broker threads had been the ones it waited behind.  Niceness only weighs who runs first on a busy core: on
an idle machine nothing changes.

Linux gives every thread its own nice value, and a thread or process inherits its
creator's (the process pool's own threads and its fork server are started by a
helper thread).  Elsewhere a nice value is the whole process's, so helper threads
keep the process's priority there; image workers, processes of their own, are
lowered everywhere.

A core is not all the IOLoop waits for: a thread of the same process that holds the
interpreter lock keeps it from the IOLoop's thread for up to the switch interval,
Python's 5 ms by default.  The server's is ``SWITCH_INTERVAL``, 1 ms.  Measured
during the same burst (three rounds alternating with the 5 ms default), ``/healthz``
p99 while the burst was only being processed: 4.9, 4.2 and 5.3 ms at 5 ms; 3.2, 3.1
and 2.0 ms at 1 ms.
"""

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

# How much lower the helper threads' CPU priority is than the IOLoop's (nice(2)).
HELPER_NICENESS = 10
# The image workers' nice value: the lowest priority.
WORKER_NICENESS = 19
# The longest a thread holding the interpreter lock keeps it from the IOLoop's (s).
SWITCH_INTERVAL = 0.001


def hand_over_the_interpreter_promptly():
    """The server's switch interval: a thread that wants the interpreter lock (the
    IOLoop's, woken by a request) gets it within ``SWITCH_INTERVAL``."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def helper_executor(prefix, threads=None):
    """A thread pool for blocking calls made for the IOLoop; its threads run below it."""
    return ThreadPoolExecutor(threads, thread_name_prefix=prefix, initializer=lower_this_thread)


def lower_this_thread():
    """Run the calling thread ``HELPER_NICENESS`` below its present priority (Linux)."""
    if sys.platform == "linux":
        tid = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(niceness + HELPER_NICENESS, WORKER_NICENESS))


def lower_this_process():
    """An image worker's priority: the lowest (a worker process runs one thread)."""
    os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICENESS)
