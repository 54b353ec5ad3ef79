"""How the databases' transactions end when something fails under them, on the real
servers: a COMMIT that SQLite refuses, a PostgreSQL statement timeout, and a
PostgreSQL connection that dies under a call."""

import sqlite3
import uuid

import psycopg2
import pytest

from storage import StorageError
from storage.postgres import PostgresStorage
from storage.sqlite import SQLiteStorage
from tests.conftest import PG_URL


@pytest.fixture
def sqlite_storage(io_loop, tmp_path):
    """One storage thread, so every call runs on the same SQLite connection."""
    store = SQLiteStorage(str(tmp_path / "photo-app.db"), threads=1)
    io_loop.run_sync(store.migrate)
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def pg_storage(io_loop, postgres_url):
    store = PostgresStorage(postgres_url, pool_size=2)
    io_loop.run_sync(store.migrate)
    yield store
    io_loop.run_sync(store.close)


@pytest.mark.gen_test(timeout=20)
async def test_a_commit_sqlite_refuses_leaves_the_connection_usable(sqlite_storage):
    request_id = uuid.uuid4().hex
    await sqlite_storage.mark_processing(request_id, "alice")

    def point_at_a_missing_image(cursor):
        # A deferred foreign key is checked at COMMIT, which then fails for real.
        cursor.execute("PRAGMA defer_foreign_keys = ON")
        cursor.execute("UPDATE uploads SET image_id = 999999 WHERE request_id = ?",
                       (request_id,))
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await sqlite_storage._run(point_at_a_missing_image, write=True)

    # The same connection (one thread) begins new transactions, reads and writes.
    upload = await sqlite_storage.get_upload(request_id)
    assert upload["image_id"] is None and upload["status"] == "processing"
    failed = await sqlite_storage.mark_failed(request_id, "alice", "not an image")
    assert failed["status"] == "failed"


@pytest.mark.gen_test(timeout=20)
async def test_a_statement_timeout_runs_the_call_once_and_keeps_the_pool(pg_storage):
    await pg_storage.get_upload("warm-up")  # leaves one idle connection in the pool
    idle = list(pg_storage._pool._idle)
    runs = []

    def slow(cursor):
        runs.append(1)
        cursor.execute("SET LOCAL statement_timeout = 50")
        cursor.execute("SELECT pg_sleep(10)")
    with pytest.raises(StorageError, match="QueryCanceled|statement timeout"):
        await pg_storage._run(slow)
    assert len(runs) == 1
    assert idle and all(conn.closed == 0 for conn in idle)
    assert set(idle) <= set(pg_storage._pool._idle)  # back in the pool, still usable
    assert await pg_storage.get_upload("after") is None


@pytest.mark.gen_test(timeout=20)
async def test_a_connection_that_dies_under_a_call_is_replaced_and_the_call_run_again(
        pg_storage):
    runs = []

    def killed_once(cursor):
        runs.append(1)
        if len(runs) == 1:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        cursor.execute("SELECT 42")
        return cursor.fetchone()[0]
    assert await pg_storage._run(killed_once) == 42
    assert len(runs) == 2


@pytest.mark.gen_test(timeout=20)
async def test_idle_connections_the_server_dropped_are_replaced(pg_storage, postgres_url):
    await pg_storage.get_upload("warm-up")
    [conn] = pg_storage._pool._idle
    admin = psycopg2.connect(PG_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    admin.close()
    assert await pg_storage.get_upload("after") is None
    assert conn.closed
