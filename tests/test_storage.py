"""The storage contract, run on SQLite and PostgreSQL alike.

Every test gets a fresh, empty database (a file in tmp_path, or a database of
its own on the PostgreSQL server) so that the two backends answer the same
questions from the same starting point.
"""

import asyncio
import hashlib
import sqlite3
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import ROOT, free_port
from storage import FAILED, PROCESSING, REFUSED, STORED, NewImage, StorageError
from storage.postgres import PostgresStorage
from storage.sql import MIGRATIONS
from storage.sqlite import PAGE_SIZE, SQLiteStorage

BACKENDS = ["sqlite", "postgres"]
SCHEMA_TABLES = {"images", "uploads", "events_done", "schema_version"}
TABLES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgres": "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
}
# Every byte value, several times over: what a driver mangling bytes would break.
ALL_BYTES = bytes(range(256)) * 64


# -- fixtures and helpers ------------------------------------------------------

@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def database(request, tmp_path, backend):
    """Where a new, empty database of this backend lives: a file path or a URL."""
    if backend == "sqlite":
        return str(tmp_path / "photo-app.db")
    return request.getfixturevalue("postgres_url")


def open_backend(backend, database):
    if backend == "sqlite":
        return SQLiteStorage(database, threads=4)
    return PostgresStorage(database, pool_size=4)


@pytest.fixture
def empty_storage(io_loop, backend, database):
    """A storage on an empty database, not migrated; closed after the test."""
    store = open_backend(backend, database)
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def storage(io_loop, empty_storage):
    """A storage with the schema in place."""
    io_loop.run_sync(empty_storage.migrate)
    return empty_storage


async def query(store, sql, params=()):
    """All rows of ``sql``, run through the storage's own connections."""
    return await store._run(lambda cursor: store._execute(cursor, sql, params).fetchall())


async def count(store, table, where="1 = 1", params=()):
    rows = await query(store, "SELECT COUNT(*) FROM %s WHERE %s" % (table, where), params)
    return rows[0][0]


async def tables(store):
    return {row[0] for row in await query(store, TABLES_SQL[store.db_type])}


async def versions(store):
    return [row[0] for row in await query(store, "SELECT version FROM schema_version "
                                                 "ORDER BY version")]


def new_image(data=b"\x89PNG fake image bytes", nickname="alice", mime_type="image/png"):
    return NewImage(nickname=nickname, mime_type=mime_type, data=data, width=64, height=48,
                    sha256=hashlib.sha256(data).hexdigest())


def parse_time(value):
    """An ISO 8601 string with a UTC offset, as the contract promises."""
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


# -- schema --------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_migrate_creates_the_schema_on_an_empty_database(empty_storage):
    assert not await tables(empty_storage) & SCHEMA_TABLES
    assert await empty_storage.migrate() == len(MIGRATIONS)
    assert SCHEMA_TABLES <= await tables(empty_storage)
    assert await versions(empty_storage) == list(range(1, len(MIGRATIONS) + 1))
    for table in ("images", "uploads", "events_done"):
        assert await count(empty_storage, table) == 0


@pytest.mark.gen_test(timeout=30)
async def test_migrating_again_is_a_no_op(storage):
    """A restart migrates again: nothing is re-applied and no data is lost."""
    await storage.mark_processing("r-1", "alice")
    secret = await storage.request_id_secret()
    assert await storage.migrate() == len(MIGRATIONS)
    assert await storage.migrate() == len(MIGRATIONS)
    assert await versions(storage) == list(range(1, len(MIGRATIONS) + 1))
    assert (await storage.get_upload("r-1"))["status"] == PROCESSING
    assert await storage.request_id_secret() == secret


MIGRATE_SCRIPT = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from storage.postgres import PostgresStorage
from storage.sqlite import PAGE_SIZE, SQLiteStorage

backend, database, start = sys.argv[2], sys.argv[3], float(sys.argv[4])

async def main():
    store = SQLiteStorage(database) if backend == "sqlite" else PostgresStorage(database)
    time.sleep(max(0.0, start - time.time()))  # all processes go at once
    try:
        print(await store.migrate())
    finally:
        await store.close()

asyncio.run(main())
"""


@pytest.mark.gen_test(timeout=60)
async def test_processes_migrating_one_database_at_once_all_succeed(empty_storage, backend,
                                                                    database):
    """Several app processes starting together on a new database (a docker-compose
    up, say) must not trip over each other's CREATE TABLEs."""
    start = time.time() + 2.0
    processes = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", MIGRATE_SCRIPT, ROOT, backend, database, str(start),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for _ in range(8)]
    results = [await process.communicate() for process in processes]
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err.decode()
        assert out.decode().strip() == str(len(MIGRATIONS))
    assert await versions(empty_storage) == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_TABLES <= await tables(empty_storage)


# Every bytea column of the schema, and how each is stored (pg_attribute.attstorage:
# "e" is EXTERNAL, out of line and never compressed; "x", the default, tries to compress).
BYTEA_STORAGE_SQL = ("SELECT c.relname, a.attname, a.attstorage FROM pg_attribute a "
                     "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON "
                     "n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r' "
                     "AND a.atttypid = 'bytea'::regtype AND a.attnum > 0 AND NOT a.attisdropped")
BYTEA_COLUMNS = {("images", "data"), ("thumbnails", "data"), ("dead_letters", "data")}
# Bytes PostgreSQL's default storage would compress (they repeat).
COMPRESSIBLE = b"the same words again and again " * 1000


async def bytea_storage(store):
    return {(table, column): storage for table, column, storage in
            await query(store, BYTEA_STORAGE_SQL)}


async def assert_bytes_stored_uncompressed(store):
    from imaging.process import Thumbnail
    image = new_image(COMPRESSIBLE, nickname="external")
    image.thumbnails = [Thumbnail(256, "image/jpeg", 256, 192, COMPRESSIBLE)]
    stored = await store.store_image("r-external", image)
    await store.record_dead_letter("r-dead", "alice", "x.png", "image/png", COMPRESSIBLE, 5,
                                   "gave up")
    assert await query(store, "SELECT pg_column_compression(data) FROM images WHERE id = %s "
                       "UNION ALL SELECT pg_column_compression(data) FROM thumbnails "
                       "WHERE image_id = %s UNION ALL SELECT pg_column_compression(data) "
                       "FROM dead_letters", (stored["id"], stored["id"])) == [(None,)] * 3
    assert (await store.get_image_content(stored["id"]))[0] == COMPRESSIBLE
    assert (await store.get_thumbnail(stored["id"], 256))[0] == COMPRESSIBLE


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("backend", ["postgres"])
async def test_every_bytea_column_is_stored_external_on_a_new_database(storage):
    assert await bytea_storage(storage) == {column: "e" for column in BYTEA_COLUMNS}
    await assert_bytes_stored_uncompressed(storage)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_database_of_the_schema_before_is_migrated_to_external_storage(
        empty_storage, monkeypatch):
    import storage.sql
    external = next(n for n, script in enumerate(MIGRATIONS)
                    if "SET STORAGE EXTERNAL" in str(script))
    monkeypatch.setattr(storage.sql, "MIGRATIONS", MIGRATIONS[:external])
    assert await empty_storage.migrate() == external
    old = await empty_storage.store_image("r-old", new_image(COMPRESSIBLE, nickname="old"))
    assert await bytea_storage(empty_storage) == {column: "x" for column in BYTEA_COLUMNS}
    assert await query(empty_storage, "SELECT pg_column_compression(data) FROM images") \
        == [("pglz",)]

    monkeypatch.setattr(storage.sql, "MIGRATIONS", MIGRATIONS)
    assert await empty_storage.migrate() == len(MIGRATIONS)
    assert await bytea_storage(empty_storage) == {column: "e" for column in BYTEA_COLUMNS}
    assert (await empty_storage.get_image_content(old["id"]))[0] == COMPRESSIBLE
    await assert_bytes_stored_uncompressed(empty_storage)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_new_sqlite_database_has_64_kib_pages(storage):
    assert await query(storage, "PRAGMA page_size") == [(PAGE_SIZE,)] == [(65536,)]
    big = ALL_BYTES * 20  # past BLOB_IO_BYTES: written and read through blob I/O
    stored = await storage.store_image("r-big", new_image(big))
    assert (await storage.get_image_content(stored["id"]))[0] == big


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_sqlite_database_made_with_4_kib_pages_keeps_them_and_works(database):
    made = sqlite3.connect(database)  # as every version before 64 KiB pages made them
    made.execute("PRAGMA page_size=4096")
    made.execute("CREATE TABLE made_before (x)")
    made.close()
    store = SQLiteStorage(database, threads=4)
    try:
        await store.migrate()
        big = ALL_BYTES * 20
        stored = await store.store_image("r-big", new_image(big))
        assert (await store.get_image_content(stored["id"]))[0] == big
        assert await query(store, "PRAGMA page_size") == [(4096,)]
    finally:
        await store.close()


# -- uploads -------------------------------------------------------------------

@pytest.mark.gen_test
async def test_an_upload_moves_processing_stored(storage):
    """An upload accepted by the web tier has no row until the processor begins it:
    its row then says when it was accepted."""
    assert await storage.get_upload("r-1") is None
    accepted = "2026-01-02T03:04:05.678000+00:00"
    processing = await storage.mark_processing("r-1", "alice", accepted)
    assert {k: processing[k] for k in ("request_id", "nickname", "status", "image_id",
                                       "error", "attempts")} \
        == {"request_id": "r-1", "nickname": "alice", "status": PROCESSING, "image_id": None,
            "error": None, "attempts": 1}
    created = parse_time(processing["created_at"])
    assert created == parse_time(accepted)
    assert await storage.get_upload("r-1") == processing

    image = await storage.store_image("r-1", new_image())
    stored = await storage.get_upload("r-1")
    assert stored["status"] == STORED
    assert stored["image_id"] == image["id"]
    assert stored["error"] is None
    assert parse_time(stored["created_at"]) == created
    assert parse_time(stored["updated_at"]) >= parse_time(processing["updated_at"]) >= created


@pytest.mark.gen_test
async def test_mark_processing_creates_an_upload_published_elsewhere(storage):
    """Another AMQP client may publish an upload this service never recorded."""
    upload = await storage.mark_processing("from-elsewhere", "bob")
    assert (upload["request_id"], upload["nickname"], upload["status"]) \
        == ("from-elsewhere", "bob", PROCESSING)
    assert await storage.get_upload("from-elsewhere") == upload
    assert parse_time(upload["created_at"]) == parse_time(upload["updated_at"])
    again = await storage.mark_processing("from-elsewhere", "bob")  # redelivered
    assert (again["status"], again["attempts"], again["created_at"]) \
        == (PROCESSING, 2, upload["created_at"])


@pytest.mark.gen_test
async def test_mark_processing_leaves_a_finished_upload_alone(storage):
    """A redelivered message sees the final status and can skip the work."""
    image = await storage.store_image("r-1", new_image())
    upload = await storage.mark_processing("r-1", "alice")
    assert (upload["status"], upload["image_id"]) == (STORED, image["id"])


@pytest.mark.gen_test
async def test_storing_one_request_twice_keeps_one_image(storage):
    """A redelivered upload must not store a second copy."""
    first = await storage.store_image("r-1", new_image(b"first"))
    again = await storage.store_image("r-1", new_image(b"second"))
    assert again == first
    assert await count(storage, "images") == 1
    assert (await storage.get_image_content(first["id"]))[0] == b"first"
    assert (await storage.get_upload("r-1"))["image_id"] == first["id"]


@pytest.mark.gen_test
async def test_racing_stores_of_one_request_keep_one_image(storage):
    """Two consumers handed the same message at once still store once."""
    results = await asyncio.gather(*[storage.store_image("r-1", new_image(b"x%d" % i))
                                     for i in range(4)])
    assert len({image["id"] for image in results}) == 1
    assert await count(storage, "images") == 1


@pytest.mark.gen_test
async def test_mark_failed_records_the_reason(storage):
    await storage.mark_processing("r-1", "alice")
    failed = await storage.mark_failed("r-1", "alice", "not an image")
    assert (failed["status"], failed["error"], failed["image_id"]) \
        == (FAILED, "not an image", None)
    assert await storage.get_upload("r-1") == failed
    # An upload never seen before ends failed too.
    other = await storage.mark_failed("r-2", "bob", "too large")
    assert (other["status"], other["error"], other["nickname"]) == (FAILED, "too large", "bob")


@pytest.mark.gen_test
async def test_mark_failed_never_overrides_stored(storage):
    image = await storage.store_image("r-1", new_image())
    before = await storage.get_upload("r-1")
    after = await storage.mark_failed("r-1", "alice", "late failure")
    assert after == before
    assert (after["status"], after["image_id"], after["error"]) == (STORED, image["id"], None)


@pytest.mark.gen_test
async def test_a_request_id_is_created_once(storage):
    """The request id is unique: the processor's row stays the one row, whatever
    writes the same id after it."""
    await storage.mark_processing("r-1", "alice")
    assert await storage.refuse_upload("r-1", "mallory", "no confirm") is False
    await storage.mark_processing("r-1", "mallory")
    upload = await storage.get_upload("r-1")
    assert (upload["nickname"], upload["status"], upload["attempts"]) \
        == ("alice", PROCESSING, 2)
    assert await count(storage, "uploads") == 1


@pytest.mark.gen_test
async def test_refuse_upload_marks_only_an_upload_without_a_row(storage):
    """The web tier refuses an upload the broker did not confirm, unless the
    processor has it already (then the broker had it after all).  A refusal
    repeated (its answer was lost) still says it is refused."""
    await storage.mark_processing("processing", "alice")
    await storage.store_image("stored", new_image())
    assert await storage.refuse_upload("queued", "alice", "no confirm") is True
    assert await storage.refuse_upload("queued", "alice", "no confirm") is True
    assert await storage.refuse_upload("processing", "alice", "no confirm") is False
    assert await storage.refuse_upload("stored", "alice", "no confirm") is False
    refused = await storage.get_upload("queued")
    assert (refused["status"], refused["error"], refused["nickname"]) \
        == (REFUSED, "no confirm", "alice")
    assert (await storage.mark_processing("queued", "alice"))["status"] == REFUSED
    assert (await storage.get_upload("processing"))["status"] == PROCESSING
    assert (await storage.get_upload("stored"))["status"] == STORED


# -- images --------------------------------------------------------------------

@pytest.mark.gen_test
async def test_image_bytes_come_back_identical(storage):
    image = new_image(ALL_BYTES, nickname="carol", mime_type="image/webp")
    stored = await storage.store_image("r-1", image)
    assert stored == {**stored, "request_id": "r-1", "nickname": "carol",
                      "mime_type": "image/webp", "size": len(ALL_BYTES), "width": 64,
                      "height": 48, "sha256": image.sha256}
    parse_time(stored["created_at"])
    assert stored.pop("duplicate") is False
    assert await storage.get_image(stored["id"]) == stored

    data, mime_type, sha256 = await storage.get_image_content(stored["id"])
    assert type(data) is bytes
    assert data == ALL_BYTES
    assert (mime_type, sha256) == ("image/webp", hashlib.sha256(ALL_BYTES).hexdigest())


@pytest.mark.gen_test
async def test_every_field_of_a_stored_image_comes_back_as_it_went_in(storage):
    """Text beyond ASCII, missing EXIF fields and the creation time survive the way
    the backend sends rows (PostgreSQL: binary COPY)."""
    from imaging.process import Thumbnail
    image = new_image(b"\x00photo\xff", nickname="Zo\u00eb \U0001f338")
    image.camera, image.taken_at = "K\u00f6nica \u201cMinolta\u201d", None
    image.thumbnails = [Thumbnail(256, "image/webp", 256, 1, b"")]
    before = datetime.now(timezone.utc)
    stored = await storage.store_image("r-\u00e9", image)
    after = datetime.now(timezone.utc)
    assert before <= parse_time(stored["created_at"]) <= after
    assert await storage.get_image(stored["id"]) == {
        **{k: v for k, v in stored.items() if k != "duplicate"}, "request_id": "r-\u00e9",
        "nickname": "Zo\u00eb \U0001f338", "camera": "K\u00f6nica \u201cMinolta\u201d",
        "taken_at": None, "size": 7, "width": 64, "height": 48}
    assert await storage.get_thumbnail(stored["id"], 256) == (b"", "image/webp", 256, 1)
    assert (await storage.get_image_content(stored["id"]))[0] == b"\x00photo\xff"


@pytest.mark.gen_test
async def test_unknown_ids_are_none(storage):
    await storage.store_image("r-1", new_image())
    assert await storage.get_image(10 ** 9) is None
    assert await storage.get_image_content(10 ** 9) is None
    assert await storage.get_upload("no-such-request") is None


@pytest.mark.gen_test
async def test_the_same_bytes_under_the_same_nickname_are_stored_once(storage):
    first = await storage.store_image("r-1", new_image(b"same bytes", nickname="alice"))
    again = await storage.store_image("r-2", new_image(b"same bytes", nickname="alice"))
    other = await storage.store_image("r-3", new_image(b"same bytes", nickname="bob"))
    assert (first["duplicate"], again["duplicate"], other["duplicate"]) == (False, True, False)
    assert again["id"] == first["id"] and other["id"] != first["id"]
    upload = await storage.get_upload("r-2")
    assert (upload["status"], upload["image_id"], upload["duplicate"]) == (
        STORED, first["id"], True)
    assert (await storage.get_upload("r-1"))["duplicate"] is False
    # A redelivery of the duplicate stays a duplicate of the same image.
    assert (await storage.store_image("r-2", new_image(b"same bytes", nickname="alice")))[
        "id"] == first["id"]


@pytest.mark.gen_test
async def test_thumbnails_and_exif_fields_are_stored_with_the_image(storage):
    from imaging.process import Thumbnail
    image = new_image(b"original")
    image.taken_at, image.camera = "2024-05-06T07:08:09", "Google Pixel 9"
    image.thumbnails = [Thumbnail(1280, "image/jpeg", 640, 480, ALL_BYTES),
                        Thumbnail(256, "image/jpeg", 256, 192, b"small")]
    stored = await storage.store_image("r-1", image)
    assert (stored["taken_at"], stored["camera"]) == ("2024-05-06T07:08:09", "Google Pixel 9")
    assert await storage.get_thumbnail(stored["id"], 1280) == (ALL_BYTES, "image/jpeg", 640, 480)
    assert await storage.get_thumbnail(stored["id"], 256) == (b"small", "image/jpeg", 256, 192)
    assert await storage.get_thumbnail(stored["id"], 512) is None
    assert await storage.get_thumbnail(10 ** 9, 256) is None


# -- notifier bookkeeping ------------------------------------------------------

@pytest.mark.gen_test
async def test_events_are_done_once_recorded(storage):
    assert await storage.event_done("stored:r-1") is False
    await storage.record_event("stored:r-1")
    assert await storage.event_done("stored:r-1") is True
    await storage.record_event("stored:r-1")  # a redelivered event records again
    assert await storage.event_done("stored:r-1") is True
    assert await storage.event_done("stored:r-2") is False


# -- faults and threads --------------------------------------------------------

@pytest.mark.gen_test(timeout=20)
async def test_an_unreachable_postgres_raises_storage_error():
    store = PostgresStorage("postgresql://postgres@127.0.0.1:%d/photo" % free_port())
    try:
        for call in (store.migrate, store.ping, lambda: store.get_upload("r-1")):
            with pytest.raises(StorageError):
                await call()
    finally:
        await store.close()


def _directory(tmp_path):
    return str(tmp_path)


def _not_a_database(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database\x00" * 64)
    return str(path)


def _under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("")
    return str(tmp_path / "a-file" / "sub" / "photo-app.db")


@pytest.mark.gen_test
@pytest.mark.parametrize("where", [_directory, _not_a_database, _under_a_file])
async def test_an_unusable_sqlite_path_raises_storage_error(tmp_path, where):
    """Startup and handlers catch StorageError; a raw sqlite3/OS error would escape
    them as a traceback (or a 500) instead of "database unavailable"."""
    store = SQLiteStorage(where(tmp_path))
    try:
        for call in (store.migrate, store.ping, lambda: store.get_upload("r-1")):
            with pytest.raises(StorageError):
                await call()
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_database_work_runs_on_the_storage_threads(storage, monkeypatch):
    """The IOLoop thread never touches a connection."""
    seen = []
    connection = storage._connection

    def spy(write):
        seen.append(threading.current_thread())
        return connection(write)

    monkeypatch.setattr(storage, "_connection", spy)
    await storage.refuse_upload("r-0", "alice", "no confirm")
    await storage.mark_processing("r-1", "alice")
    image = await storage.store_image("r-1", new_image())
    await storage.get_upload("r-1")
    await storage.get_image_content(image["id"])
    await storage.event_done("e")
    assert len(seen) == 6
    assert all(thread is not threading.main_thread() for thread in seen)
    assert all(thread.name.startswith("storage") for thread in seen)


@pytest.mark.gen_test
async def test_the_loop_keeps_turning_during_a_slow_query(storage):
    # The query is held by a gate until the loop has turned five times beside it.
    gate = threading.Event()
    slow = asyncio.ensure_future(storage._run(lambda cursor: gate.wait(10)))
    ticks = 0
    while ticks < 5:
        assert not slow.done(), "the query returned before the gate opened"
        ticks += 1
        await asyncio.sleep(0.01)
    gate.set()
    assert await slow is True


# -- SQLite specifics ----------------------------------------------------------

@pytest.mark.gen_test
async def test_an_in_memory_sqlite_database_is_one_database():
    """``sqlite:///`` means ":memory:", which is private to one connection: every
    call must see the schema that migrate() made."""
    store = SQLiteStorage(":memory:", threads=4)
    try:
        await store.migrate()
        await asyncio.gather(*[store.mark_processing("r-%d" % i, "alice") for i in range(8)])
        uploads = await asyncio.gather(*[store.get_upload("r-%d" % i) for i in range(8)])
        assert [upload["status"] for upload in uploads] == [PROCESSING] * 8
    finally:
        await store.close()
