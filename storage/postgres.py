"""PostgreSQL through psycopg2, with a thread-safe connection pool.

Every call runs on the storage thread pool, which is as large as the
connection pool, so a thread never waits for a connection.  A connection that
failed with a connection-level error is closed instead of returned, and the
pool opens a fresh one on the next call.
"""

import contextlib
import logging
import urllib.parse

import psycopg2
import psycopg2.errors
import psycopg2.pool

from storage.sql import SQLStorage

log = logging.getLogger(__name__)

# Any fixed number; all processes migrating the same database take this lock.
MIGRATION_LOCK_ID = 72_430_001


def _redact(url):
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts)


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


class PostgresStorage(SQLStorage):
    db_type = "postgres"
    column_types = {"id_column": "BIGSERIAL PRIMARY KEY",
                    "timestamp": "TIMESTAMPTZ", "blob": "BYTEA"}
    driver_errors = (psycopg2.OperationalError, psycopg2.InterfaceError,
                     psycopg2.pool.PoolError)

    def __init__(self, url, pool_size=8):
        super().__init__(pool_size)
        self.url = url
        self._pool_size = pool_size
        self._pool = None

    def describe(self):
        return "postgres at %s" % _redact(self.url)

    async def migrate(self):
        await self._in_thread(create_database_if_missing, self.url)
        return await super().migrate()

    def _get_pool(self):
        if self._pool is None:
            # psycopg2 keeps only ``minconn`` idle connections and closes the rest
            # on return, so minconn = maxconn keeps every connection open for reuse.
            self._pool = psycopg2.pool.ThreadedConnectionPool(
                self._pool_size, self._pool_size, self.url, connect_timeout=5)
        return self._pool

    @contextlib.contextmanager
    def _connection(self, write):
        pool = self._get_pool()
        conn = pool.getconn()
        try:
            with conn:  # commits on success, rolls back on error
                yield conn
        except Exception as exc:
            dead = conn.closed or isinstance(exc, (psycopg2.OperationalError,
                                                   psycopg2.InterfaceError))
            pool.putconn(conn, close=bool(dead))
            raise
        pool.putconn(conn)

    def _migration_lock(self, cursor):
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))

    async def close(self):
        await super().close()
        if self._pool is not None:
            self._pool.closeall()
