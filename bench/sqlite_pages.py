"""What a large body costs the thread that writes it to SQLite, by page size.

    .venv/bin/python bench/sqlite_pages.py [--mb 4.4] [--messages 30] [--rounds 3]

The in-process broker's table (broker/memory.py) in a file of its own, through
the app's own calls (storage/sqlite.py ``connect``, ``insert_row``,
``read_blob``, ``transaction``): each message is inserted and committed
(``synchronous=FULL``, as the broker does), read back, then deleted and
committed; the CPU time of this thread (``time.thread_time``: what the IOLoop's
thread competes with) is summed per step.  Then the small commits the broker and
the storage make most often: ``--small`` commits of one small row each (an ack's
``UPDATE``, a status, at ``synchronous=FULL``), CPU and wall time per commit, and
the WAL's size at the end (it is checkpointed back into the file every 1000
pages: 64 MiB with 64 KiB pages, 4 MiB with 4 KiB).  A file made with 4 KiB pages (SQLite's
default, what databases made before ``PAGE_SIZE`` have) and one made by
``connect`` (``PAGE_SIZE``, 64 KiB) take turns, round after round; the figures
are medians over rounds.  Figures only: nothing here asserts.
"""

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from broker.memory import SCHEMA  # noqa: E402
from storage.sqlite import PAGE_SIZE, connect, insert_row, read_blob, transaction  # noqa: E402


def one_round(path, page_size, body, messages):
    """{step: CPU ms per message} for ``messages`` bodies through a new file."""
    if page_size != PAGE_SIZE:
        made = sqlite3.connect(path)
        made.execute("PRAGMA page_size=%d" % page_size)
        made.execute("CREATE TABLE made_before (x)")
        made.close()
    conn = connect(path, synchronous="FULL")
    try:
        conn.executescript(SCHEMA)
        assert conn.execute("PRAGMA page_size").fetchone()[0] == page_size
        spent = {"insert + commit": 0.0, "read": 0.0, "delete + commit": 0.0}
        for n in range(messages):
            started = time.thread_time()
            with transaction(conn, write=True):
                row_id = insert_row(conn, "broker_messages", dict(
                    queue="q", routing_key="image.upload", message_id=str(n),
                    content_type="image/jpeg", headers="{}", body=body))
            read_at = time.thread_time()
            assert len(read_blob(conn, "broker_messages", "body", row_id)) == len(body)
            delete_at = time.thread_time()
            with transaction(conn, write=True):
                conn.execute("DELETE FROM broker_messages WHERE id = ?", (row_id,))
            done = time.thread_time()
            spent["insert + commit"] += read_at - started
            spent["read"] += delete_at - read_at
            spent["delete + commit"] += done - delete_at
        return {step: 1000 * total / messages for step, total in spent.items()}
    finally:
        conn.close()


def small_commits(path, commits):
    """(CPU ms, wall ms) per commit of a one-row UPDATE, and the WAL's MB after."""
    conn = connect(path, synchronous="FULL")
    try:
        with transaction(conn, write=True):
            row_id = insert_row(conn, "broker_messages", dict(
                queue="q", routing_key="image.uploaded", message_id="m",
                content_type="application/json", headers="{}", body=b"{}" * 200))
        cpu, wall = time.thread_time(), time.perf_counter()
        for n in range(commits):
            with transaction(conn, write=True):
                conn.execute("UPDATE broker_messages SET delivered = ? WHERE id = ?",
                             (n % 2, row_id))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        wal = os.path.getsize(path + "-wal") / 1e6 if os.path.exists(path + "-wal") else 0.0
        return 1000 * cpu / commits, 1000 * wall / commits, wal
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=4.4, help="body size in MB (10^6 bytes)")
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=300, help="small commits per round")
    args = parser.parse_args()
    body = os.urandom(int(args.mb * 1e6))
    sizes = [4096, PAGE_SIZE]
    results = {size: [] for size in sizes}
    small = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory(prefix="photo-app-bench-pages-") as tmp:
        for r in range(args.rounds):
            for size in sizes:
                path = os.path.join(tmp, "r%d-%d.db" % (r, size))
                results[size].append(one_round(path, size, body, args.messages))
                small[size].append(small_commits(path, args.small))
    steps = list(results[sizes[0]][0])
    print("SQLite page size: CPU ms of the writing thread per %.1f MB message "
          "(median of %d rounds of %d messages)" % (args.mb, args.rounds, args.messages))
    print("%-12s %s %10s" % ("page size", " ".join("%16s" % s for s in steps), "total"))
    totals = {}
    for size in sizes:
        cells = [statistics.median(r[step] for r in results[size]) for step in steps]
        totals[size] = statistics.median(sum(r.values()) for r in results[size])
        print("%-12s %s %10.1f" % ("%d KiB" % (size // 1024),
                                   " ".join("%16.1f" % c for c in cells), totals[size]))
    print("64 KiB / 4 KiB, total: %.2f" % (totals[PAGE_SIZE] / totals[4096]))
    print()
    print("small commits (one-row UPDATE, synchronous=FULL), median of %d rounds of %d"
          % (args.rounds, args.small))
    print("%-12s %16s %16s %16s" % ("page size", "CPU ms/commit", "wall ms/commit",
                                    "WAL MB after"))
    for size in sizes:
        cpu, wall, wal = (statistics.median(r[i] for r in small[size]) for i in range(3))
        print("%-12s %16.3f %16.2f %16.1f" % ("%d KiB" % (size // 1024), cpu, wall, wal))


if __name__ == "__main__":
    main()
