"""CPU priorities: the IOLoop's thread first, the threads that work for it next, the
image workers last; the IOLoop's thread given a core as soon as it wakes; and the
interpreter lock handed over promptly.

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

Niceness does not make the kernel preempt at once: a task that wakes next to a
running one of lower priority still waits until that one's slice runs out, and
the kernel looks at that on its tick (4 ms at HZ=250).  ``perf sched`` showed the
IOLoop's thread waiting 2-4.8 ms for a core behind a storage thread or an image
worker that way.  Since Linux 6.12 a thread may ask for a shorter slice than the
others' (``sched_setattr(2)``, ``sched_runtime``), and one that wakes with a shorter
slice than the running task's preempts it.  The IOLoop's thread asks for
``IOLOOP_SLICE``, the shortest there is; the threads and workers it starts go back
to the kernel's own.  Measured during the burst (four rounds alternating with the
tree before, the probe client at real-time priority): ``/healthz`` p99 over the
burst 5.15, 5.66, 5.28, 5.36 ms before, 2.92, 5.06, 3.75, 4.26 ms after.

A core is not all the IOLoop waits for: a thread of the same process that holds the
interpreter lock keeps it from the IOLoop's thread for up to the switch interval,
Python's 5 ms by default.  The server's is ``SWITCH_INTERVAL``, 1 ms.  Measured
during the same burst (three rounds alternating with the 5 ms default), ``/healthz``
p99 while the burst was only being processed: 4.9, 4.2 and 5.3 ms at 5 ms; 3.2, 3.1
and 2.0 ms at 1 ms.
"""

import ctypes
import os
import platform
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

# How much lower the helper threads' CPU priority is than the IOLoop's (nice(2)).
HELPER_NICENESS = 10
# The image workers' nice value: the lowest priority.
WORKER_NICENESS = 19
# The longest a thread holding the interpreter lock keeps it from the IOLoop's (s).
SWITCH_INTERVAL = 0.001
# The IOLoop thread's scheduler slice (ns): the shortest the kernel takes.
IOLOOP_SLICE = 100_000
# sched_setattr(2) and sched_getattr(2), by machine (Linux).
SCHED_ATTR_CALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}


class SchedAttr(ctypes.Structure):
    """The kernel's ``struct sched_attr`` (its first version, 56 bytes)."""
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32),
                ("flags", ctypes.c_uint64), ("nice", ctypes.c_int32),
                ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
                ("util_min", ctypes.c_uint32), ("util_max", ctypes.c_uint32)]


def hand_over_the_interpreter_promptly():
    """The server's switch interval: a thread that wants the interpreter lock (the
    IOLoop's, woken by a request) gets it within ``SWITCH_INTERVAL``."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def preempt_for_the_ioloop():
    """The calling thread's (the IOLoop's) scheduler slice at ``IOLOOP_SLICE``."""
    set_slice(IOLOOP_SLICE)


def set_slice(nanoseconds):
    """Ask for the calling thread's scheduler slice (0: the kernel's default); a
    thread starts with its creator's.  False where there is no such call: not
    Linux, or a machine not in ``SCHED_ATTR_CALLS``; a kernel before 6.12 takes
    the call and keeps its own slice."""
    calls = SCHED_ATTR_CALLS.get(platform.machine()) if sys.platform == "linux" else None
    if calls is None:
        return False
    set_call, get_call = calls
    libc = ctypes.CDLL(None, use_errno=True)
    attr = SchedAttr()
    if libc.syscall(ctypes.c_long(get_call), ctypes.c_long(0), ctypes.byref(attr),
                    ctypes.c_uint(ctypes.sizeof(attr)), ctypes.c_uint(0)) != 0:
        return False
    attr.size, attr.runtime = ctypes.sizeof(attr), nanoseconds
    return libc.syscall(ctypes.c_long(set_call), ctypes.c_long(0), ctypes.byref(attr),
                        ctypes.c_uint(0)) == 0


def helper_executor(prefix, threads=None):
    """A thread pool for blocking calls made for the IOLoop; its threads run below it."""
    return ThreadPoolExecutor(threads, thread_name_prefix=prefix, initializer=lower_this_thread)


def lower_this_thread():
    """Run the calling thread ``HELPER_NICENESS`` below its present priority (Linux)."""
    if sys.platform == "linux":
        tid = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(niceness + HELPER_NICENESS, WORKER_NICENESS))
    set_slice(0)  # not the IOLoop's short one, should it have made this thread


def lower_this_process():
    """An image worker's priority: the lowest (a worker process runs one thread)."""
    os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICENESS)
    set_slice(0)
