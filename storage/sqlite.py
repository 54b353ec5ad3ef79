"""SQLite: the zero-configuration database, one file in WAL mode.

Each pool thread keeps its own connection (sqlite3 connections must stay on
their thread); WAL lets readers run beside the one writer, and writers take the
lock up front (``BEGIN IMMEDIATE``) so they queue on the busy timeout instead of
failing on a lock upgrade.  ``connect`` and ``transaction`` are shared with the
in-process broker (broker/memory.py), which keeps its queues in such a file.
"""

import contextlib
import os
import sqlite3
import threading
import time

from storage.sql import SQLStorage

BUSY_TIMEOUT = 30  # seconds a connection waits for another's lock
# Bytes values at least this long go through SQLite's incremental blob I/O.
BLOB_IO_BYTES = 64 * 1024
# The page size of a new database file: SQLite's largest.  An image is a chain of
# overflow pages; 64 KiB pages make that chain 16 times shorter than the default
# 4 KiB, and storing, reading and deleting a 4.4 MB body costs the writing thread
# about half the CPU time (bench/sqlite_pages.py: 6.6 ms against 12.9 ms).  The
# price: a small commit costs a fifth more (0.11 ms against 0.09), and the WAL
# grows to 64 MiB (1000 pages) between checkpoints instead of 4 MiB.
PAGE_SIZE = 65536


def _enable_wal(conn):
    """Switching a new file to WAL can fail "database is locked" at once, without
    waiting on the busy timeout, while another process switches it too; retry."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def connect(path, synchronous="NORMAL"):
    """A connection to ``path`` in WAL mode, in autocommit (``transaction`` opens
    transactions).  ``synchronous=FULL`` makes every commit reach the disk (fsync)."""
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # check_same_thread=False only so that the owner may close them all at the end.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("PRAGMA page_size=%d" % PAGE_SIZE)  # a new file's; an old one keeps its own
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous=%s" % synchronous)
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn, write):
    """One transaction on ``conn``: committed on exit, rolled back on error (a
    failed COMMIT included, so the connection never stays inside a transaction)."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # Also when COMMIT itself failed (a deferred constraint, say): SQLite then
        # keeps the transaction open, and this connection's next BEGIN would fail.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def insert_row(conn, table, row, suffix=""):
    """INSERT ``row`` ({column: value}) into ``table``, ``suffix`` after it (``ON
    CONFLICT DO NOTHING``, say); the new rowid, or None when nothing was inserted.

    A bytes value of ``BLOB_IO_BYTES`` or more is inserted as a zeroblob of its
    length and written into the row after, through SQLite's incremental blob I/O,
    which copies without holding the interpreter lock.  Bound as a parameter it
    would be copied with the lock held (measured: 1.6 ms for 4.4 MB), and the
    IOLoop of the same process waits that long; ``read_blob`` is the same for
    reading (a SELECT of 4.4 MB holds it 3.8 ms, the blob read 0.2 ms)."""
    large = {column for column, value in row.items()
             if isinstance(value, (bytes, bytearray, memoryview)) and len(value) >= BLOB_IO_BYTES}
    cursor = conn.execute("INSERT INTO %s (%s) VALUES (%s) %s" % (
        table, ", ".join(row), ", ".join("zeroblob(?)" if column in large else "?"
                                         for column in row), suffix),
        [len(value) if column in large else value for column, value in row.items()])
    if cursor.rowcount != 1:
        return None
    for column in large:
        with conn.blobopen(table, column, cursor.lastrowid) as blob:
            blob.write(row[column])
    return cursor.lastrowid


def read_blob(conn, table, column, rowid):
    """The bytes in ``column`` of row ``rowid``, read without holding the
    interpreter lock (``insert_row``)."""
    with conn.blobopen(table, column, rowid, readonly=True) as blob:
        return blob.read()


class SQLiteStorage(SQLStorage):
    db_type = "sqlite"
    column_types = {"id_column": "INTEGER PRIMARY KEY AUTOINCREMENT",
                    "timestamp": "TEXT", "blob": "BLOB"}
    # Timestamps are ISO 8601 text in UTC (``storage.sql.utc_now``).
    minute_sql = "substr({}, 1, 16)"
    # DatabaseError covers "file is not a database"; OSError a directory that cannot be made.
    driver_errors = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)
    # Subclasses of DatabaseError that are the caller's fault, not an unavailable database.
    passed_errors = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError,
                     sqlite3.NotSupportedError, sqlite3.InternalError)

    def __init__(self, path, threads=4):
        # An in-memory database lives in one connection, so in one pool thread.
        super().__init__(1 if path == ":memory:" else threads)
        self.path = path
        self._local = threading.local()
        self._connections = []
        self._lock = threading.Lock()

    def describe(self):
        return "sqlite at %s" % os.path.abspath(self.path)

    def _sql(self, query):
        return query.replace("%s", "?")

    def _insert(self, cursor, table, row):
        insert_row(cursor.connection, table, row, "ON CONFLICT DO NOTHING")

    def _connect(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _connection(self, write):
        return transaction(self._connect(), write)

    def _migration_lock(self, cursor):
        pass  # BEGIN IMMEDIATE already holds the database's only write lock.

    async def close(self):
        await super().close()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
