"""What the benchmarks share: free ports, a clean environment for app processes,
and the CPU time of a process."""

import os
import signal
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from config import environment_names  # noqa: E402


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment():
    """os.environ without any of the app's settings, for a server started by a bench."""
    names = environment_names()
    return {key: value for key, value in os.environ.items() if key not in names}


def die_with_parent():
    """In the child: get SIGTERM if the bench itself dies (Linux), so no server outlives it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def process_cpu_seconds(pid):
    """utime + stime of a process (all its threads), from /proc; 0 where unknown."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
