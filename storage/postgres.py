"""PostgreSQL through psycopg2, with a small thread-safe connection pool.

Every call runs on the storage thread pool, which is as large as the
connection pool, so a thread never waits for a connection.  When a connection
dies under a call (the server restarted or went away, refused or reset the
connection: the driver then marks the connection closed, or raises
InterfaceError), it is closed together with every idle one, since they share
its fate, and the call is tried once more on a fresh connection
(``SQLStorage._run``).  Any other error, a statement timeout (QueryCanceled)
included, leaves the pool alone and is not retried.  While the server is down,
calls fail fast with ``StorageError``: connecting is bounded by
``connect_timeout`` and statements by ``statement_timeout``.
"""

import contextlib
import logging
import threading
import urllib.parse

import psycopg2
import psycopg2.errors

from config import redact_url
from storage.sql import ConnectionLost, SQLStorage

log = logging.getLogger(__name__)

# Any fixed number; all processes migrating the same database take this lock.
MIGRATION_LOCK_ID = 72_430_001
CONNECT_OPTIONS = {"connect_timeout": 5, "options": "-c statement_timeout=30000",
                   "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                   "keepalives_count": 3}
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def create_database_if_missing(url):
    """Create the database named in ``url`` (the zero-step set-up a new user expects)."""
    try:
        psycopg2.connect(url, connect_timeout=5).close()
        return False
    except psycopg2.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(urllib.parse.urlunsplit(parts._replace(path="/postgres")),
                             connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE %s" % psycopg2.extensions.quote_ident(name, cursor))
        log.info("created database %s", name)
    except psycopg2.errors.DuplicateDatabase:
        pass  # another process made it first
    finally:
        admin.close()
    return True


class ConnectionPool:
    """Idle connections kept for reuse; new ones opened on demand."""

    def __init__(self, url):
        self.url = url
        self._idle = []
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return psycopg2.connect(self.url, **CONNECT_OPTIONS)

    def put(self, conn):
        if conn.closed:
            return
        with self._lock:
            self._idle.append(conn)

    def discard(self, conn):
        """Close ``conn`` and every idle connection (the server they all talk to failed)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for each in [conn, *idle]:
            try:
                each.close()
            except psycopg2.Error:
                pass

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresStorage(SQLStorage):
    db_type = "postgres"
    column_types = {"id_column": "BIGSERIAL PRIMARY KEY",
                    "timestamp": "TIMESTAMPTZ", "blob": "BYTEA"}
    driver_errors = CONNECTION_ERRORS
    minute_sql = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI')"

    def __init__(self, url, pool_size=8):
        super().__init__(pool_size)
        self.url = url
        self._pool = ConnectionPool(url)

    def describe(self):
        return "postgres at %s" % redact_url(self.url)

    async def migrate(self):
        await self._in_thread(create_database_if_missing, self.url)
        return await super().migrate()

    @contextlib.contextmanager
    def _connection(self, write):
        try:
            conn = self._pool.get()
        except psycopg2.OperationalError as exc:  # refused, unreachable: no call ran yet
            raise ConnectionLost() from exc
        try:
            with conn:  # commits on success, rolls back on error
                yield conn
        except Exception as exc:
            if conn.closed or isinstance(exc, psycopg2.InterfaceError):
                self._pool.discard(conn)
                if isinstance(exc, CONNECTION_ERRORS):
                    raise ConnectionLost() from exc
            else:
                self._pool.put(conn)
            raise
        self._pool.put(conn)

    def _migration_lock(self, cursor):
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))

    async def close(self):
        await super().close()
        self._pool.close()
