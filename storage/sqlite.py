"""SQLite: the zero-configuration database, one file in WAL mode.

Each pool thread keeps its own connection (sqlite3 connections must stay on
their thread); WAL lets readers run beside the one writer, and writers take the
lock up front (``BEGIN IMMEDIATE``) so they queue on the busy timeout instead of
failing on a lock upgrade.
"""

import contextlib
import os
import sqlite3
import threading

from storage.sql import SQLStorage


class SQLiteStorage(SQLStorage):
    db_type = "sqlite"
    column_types = {"id_column": "INTEGER PRIMARY KEY AUTOINCREMENT",
                    "timestamp": "TEXT", "blob": "BLOB"}
    driver_errors = (sqlite3.OperationalError, sqlite3.DatabaseError)

    def __init__(self, path, threads=4):
        super().__init__(threads)
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._local = threading.local()
        self._connections = []
        self._lock = threading.Lock()

    def describe(self):
        return "sqlite at %s" % os.path.abspath(self.path)

    def _sql(self, query):
        return query.replace("%s", "?")

    def _connect(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so that close() may close them all at the end.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _connection(self, write):
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migration_lock(self, cursor):
        pass  # BEGIN IMMEDIATE already holds the database's only write lock.

    async def close(self):
        await super().close()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
