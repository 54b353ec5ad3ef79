"""The SQL both databases share: schema, queries and the thread-pool plumbing.

A backend subclass says how to get a connection (``_connection``), how to lock
for migrations, and how its column types are spelled; every query is written
once here, with ``%s`` placeholders that SQLite's subclass turns into ``?``.
"""

import asyncio
import json
import secrets
from datetime import datetime, timezone

from priority import helper_executor
from storage import (DEAD, DELETED, FAILED, GONE, PENDING, PROCESSING, QUEUED, REFUSED,
                     STORED, Storage, StorageError)

# Each entry is one schema version; never edit one that has shipped, append.  An
# entry is SQL for both backends, or {db_type: SQL} where they differ.
MIGRATIONS = [
    """
    CREATE TABLE images (
        id {id_column},
        request_id TEXT NOT NULL UNIQUE,
        nickname TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at {timestamp} NOT NULL,
        data {blob} NOT NULL
    );
    CREATE INDEX images_nickname_id ON images (nickname, id);
    CREATE TABLE uploads (
        request_id TEXT PRIMARY KEY,
        nickname TEXT NOT NULL,
        status TEXT NOT NULL,
        image_id BIGINT REFERENCES images (id),
        error TEXT,
        created_at {timestamp} NOT NULL,
        updated_at {timestamp} NOT NULL
    );
    CREATE TABLE events_done (
        key TEXT PRIMARY KEY,
        done_at {timestamp} NOT NULL
    )
    """,
    """
    ALTER TABLE images ADD COLUMN taken_at TEXT;
    ALTER TABLE images ADD COLUMN camera TEXT;
    ALTER TABLE uploads ADD COLUMN duplicate INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX images_nickname_sha256 ON images (nickname, sha256);
    CREATE TABLE thumbnails (
        image_id BIGINT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
        size INTEGER NOT NULL,
        mime_type TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        data {blob} NOT NULL,
        PRIMARY KEY (image_id, size)
    )
    """,
    """
    ALTER TABLE uploads ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE uploads ADD COLUMN dead_lettered INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE dead_letters (
        request_id TEXT PRIMARY KEY,
        nickname TEXT NOT NULL,
        filename TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data {blob} NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        created_at {timestamp} NOT NULL
    )
    """,
    """
    CREATE TABLE deleted_images (
        image_id BIGINT PRIMARY KEY,
        request_id TEXT NOT NULL,
        nickname TEXT NOT NULL,
        announced INTEGER NOT NULL DEFAULT 0,
        deleted_at {timestamp} NOT NULL
    )
    """,
    # Webhook and e-mail deliveries (notify/, consumers/deliveries.py): one row per
    # event (or digest) and target, its state, tries, last error and the sender's lease;
    # and the events a mail digest gathers until it is sent.
    """
    CREATE TABLE deliveries (
        id {id_column},
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        message_id TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        created_at {timestamp} NOT NULL,
        updated_at {timestamp} NOT NULL,
        UNIQUE (action, target, message_id)
    );
    CREATE INDEX deliveries_status ON deliveries (status, updated_at);
    CREATE TABLE digest_events (
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        message_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at {timestamp} NOT NULL,
        delivery_id BIGINT,
        PRIMARY KEY (action, target, message_id)
    );
    CREATE INDEX digest_events_open ON digest_events (action, target, delivery_id)
    """,
    # Image bytes are already compressed (JPEG, HEIC, WebP...): PostgreSQL keeps them
    # out of line without trying to compress them again (its TOAST compression spent
    # more CPU on each image than the rest of the insert, and saved nothing).  SQLite
    # has no such setting.
    {"postgres": """
    ALTER TABLE images ALTER COLUMN data SET STORAGE EXTERNAL;
    ALTER TABLE thumbnails ALTER COLUMN data SET STORAGE EXTERNAL;
    ALTER TABLE dead_letters ALTER COLUMN data SET STORAGE EXTERNAL
    """, "sqlite": ""},
    # The key of the request ids the web tier issues (uploads.RequestIds): one row,
    # written by the first process that starts (Storage.request_id_secret).
    """
    CREATE TABLE request_id_secret (
        id INTEGER PRIMARY KEY,
        secret TEXT NOT NULL
    )
    """,
]

IMAGE_COLUMNS = ("id, request_id, nickname, mime_type, size, width, height, sha256, created_at, "
                 "taken_at, camera")
UPLOAD_COLUMNS = ("request_id, nickname, status, image_id, duplicate, error, attempts, "
                  "dead_lettered, created_at, updated_at")
DEAD_LETTER_COLUMNS = ("request_id, nickname, filename, content_type, attempts, error, "
                       "created_at")
DELIVERY_COLUMNS = ("id, action, target, message_id, event, payload, status, tries, last_error, "
                    "lease_owner, lease_until, created_at, updated_at")


def utc_now():
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def iso(value):
    """Timestamps come back as text from SQLite and as datetime from PostgreSQL."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return value


class ConnectionLost(Exception):
    """Raised by a backend's ``_connection`` (from the driver's error) when the
    connection itself died under a call: the server went away, refused or reset
    it.  Only then is the call run again, on a fresh connection."""


def _describe(exc):
    return "%s: %s" % (type(exc).__name__, str(exc).strip())


class SQLStorage(Storage):
    column_types = {}
    # Exceptions of the driver that mean "the database is unavailable".
    driver_errors = ()
    # Exceptions among driver_errors that are the caller's fault; raised unchanged.
    passed_errors = ()

    def __init__(self, threads):
        self._executor = helper_executor("storage", threads)

    # -- plumbing ---------------------------------------------------------

    def _connection(self, write):
        """A context manager yielding a DB-API connection inside a transaction
        that commits on exit and rolls back on error."""
        raise NotImplementedError

    def _sql(self, query):
        return query

    def _migration_lock(self, cursor):
        """Hold a lock, for the rest of the transaction, that other migrators wait on."""
        raise NotImplementedError

    async def _in_thread(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except self.passed_errors:
            raise
        except ConnectionLost as exc:
            raise StorageError(_describe(exc.__cause__)) from exc.__cause__
        except self.driver_errors as exc:
            raise StorageError(_describe(exc)) from exc

    async def _run(self, fn, *args, write=False):
        """Run ``fn(cursor, *args)`` in one transaction on the thread pool.

        A connection that turns out dead (``ConnectionLost``: the server
        restarted since it was opened) is replaced and the call made once more;
        every call here is idempotent, so a second run after a lost commit
        answer is harmless.  Any other error (a statement timeout included)
        ends the call: running it again would only double its cost."""
        def call():
            for attempt in (1, 2):
                try:
                    with self._connection(write) as conn:
                        cursor = conn.cursor()
                        try:
                            return fn(cursor, *args)
                        finally:
                            cursor.close()
                except ConnectionLost:
                    if attempt == 2:
                        raise
        return await self._in_thread(call)

    def _execute(self, cursor, query, params=()):
        cursor.execute(self._sql(query), params)
        return cursor

    def _insert(self, cursor, table, row):
        """Insert ``row`` ({column: value}) into ``table``, or nothing when one of its
        unique keys is taken (ON CONFLICT DO NOTHING)."""
        self._execute(cursor, "INSERT INTO %s (%s) VALUES (%s) ON CONFLICT DO NOTHING"
                      % (table, ", ".join(row), ", ".join(["%s"] * len(row))),
                      tuple(row.values()))

    def _one(self, cursor, query, params, columns):
        row = self._execute(cursor, query, params).fetchone()
        return None if row is None else self._row(columns, row)

    @staticmethod
    def _row(columns, row):
        record = dict(zip([c.strip() for c in columns.split(",")], row))
        for key in ("created_at", "updated_at"):
            if key in record:
                record[key] = iso(record[key])
        for key in ("duplicate", "dead_lettered"):
            if key in record:
                record[key] = bool(record[key])
        return record

    # -- schema -----------------------------------------------------------

    async def migrate(self):
        return await self._run(self._migrate, write=True)

    def _migrate(self, cursor):
        self._migration_lock(cursor)
        self._execute(cursor, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._execute(cursor, "SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            if isinstance(script, dict):
                script = script[self.db_type]
            for statement in script.format(**self.column_types).split(";"):
                if statement.strip():
                    self._execute(cursor, statement)
            self._execute(cursor, "INSERT INTO schema_version (version) VALUES (%s)", (version,))
        return len(MIGRATIONS)

    async def ping(self):
        await self._run(lambda cursor: self._execute(cursor, "SELECT 1").fetchone())

    # -- uploads ----------------------------------------------------------

    async def request_id_secret(self):
        def read(cursor):
            self._execute(cursor, "INSERT INTO request_id_secret (id, secret) VALUES (1, %s) "
                          "ON CONFLICT (id) DO NOTHING", (secrets.token_hex(32),))
            return self._execute(cursor, "SELECT secret FROM request_id_secret "
                                 "WHERE id = 1").fetchone()[0]
        return await self._run(read, write=True)

    async def refuse_upload(self, request_id, nickname, reason):
        def refuse(cursor):
            now = utc_now()
            self._execute(cursor, "INSERT INTO uploads (request_id, nickname, status, error, "
                          "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
                          "ON CONFLICT (request_id) DO NOTHING",
                          (request_id, nickname, REFUSED, reason, now, now))
            return self._get_upload(cursor, request_id)["status"] == REFUSED
        return await self._run(refuse, write=True)

    async def get_upload(self, request_id):
        return await self._run(self._get_upload, request_id)

    def _get_upload(self, cursor, request_id):
        return self._one(cursor, "SELECT %s FROM uploads WHERE request_id = %%s" % UPLOAD_COLUMNS,
                         (request_id,), UPLOAD_COLUMNS)

    def _ensure_upload(self, cursor, request_id, nickname, now):
        self._execute(cursor, "INSERT INTO uploads (request_id, nickname, status, created_at, "
                      "updated_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING",
                      (request_id, nickname, QUEUED, now, now))

    async def mark_processing(self, request_id, nickname, created_at=None):
        def update(cursor):
            now = utc_now()
            self._execute(cursor, "INSERT INTO uploads (request_id, nickname, status, attempts, "
                          "created_at, updated_at) VALUES (%s, %s, %s, 1, %s, %s) "
                          "ON CONFLICT (request_id) DO UPDATE SET "
                          "attempts = uploads.attempts + 1, updated_at = excluded.updated_at, "
                          "status = CASE WHEN uploads.status = %s THEN %s "
                          "ELSE uploads.status END",
                          (request_id, nickname, PROCESSING, created_at or now, now,
                           QUEUED, PROCESSING))
            return self._get_upload(cursor, request_id)
        return await self._run(update, write=True)

    async def mark_failed(self, request_id, nickname, reason):
        def update(cursor):
            now = utc_now()
            self._ensure_upload(cursor, request_id, nickname, now)
            self._execute(cursor, "UPDATE uploads SET status = %s, error = %s, updated_at = %s "
                          "WHERE request_id = %s AND status <> %s",
                          (FAILED, reason, now, request_id, STORED))
            return self._get_upload(cursor, request_id)
        return await self._run(update, write=True)

    # The SQL of a timestamp column's UTC minute, "YYYY-MM-DDTHH:MM" (a backend's own).
    minute_sql = None

    async def upload_activity(self, since, sample):
        minute = self.minute_sql

        def select(cursor):
            activity = {"accepted": {}, "stored": {}, "failed": {}}
            for row in self._execute(cursor, "SELECT %s, COUNT(*) FROM uploads WHERE "
                                     "created_at >= %%s AND status <> %%s GROUP BY 1"
                                     % minute.format("created_at"), (since, REFUSED)):
                activity["accepted"][row[0]] = row[1]
            for row in self._execute(cursor, "SELECT status, %s, COUNT(*) FROM uploads WHERE "
                                     "updated_at >= %%s AND status IN (%%s, %%s) GROUP BY 1, 2"
                                     % minute.format("updated_at"), (since, STORED, FAILED)):
                activity[row[0]][row[1]] = row[2]
            rows = self._execute(cursor, "SELECT created_at, updated_at FROM uploads WHERE "
                                 "status = %s AND updated_at >= %s ORDER BY updated_at DESC "
                                 "LIMIT %s", (STORED, since, sample)).fetchall()
            activity["stored_seconds"] = [
                (datetime.fromisoformat(iso(updated)) - datetime.fromisoformat(iso(created)))
                .total_seconds() for created, updated in rows]
            return activity
        return await self._run(select)

    # -- images -----------------------------------------------------------

    async def store_image(self, request_id, image):
        def store(cursor):
            now = utc_now()
            if self._upload_deleted(cursor, request_id):
                return None
            # Either unique key may hold: the request id (a redelivery) or the
            # nickname and bytes (the same photo uploaded again).
            self._insert(cursor, "images", dict(
                request_id=request_id, nickname=image.nickname, mime_type=image.mime_type,
                size=image.size, width=image.width, height=image.height, sha256=image.sha256,
                created_at=now, taken_at=image.taken_at, camera=image.camera, data=image.data))
            stored = self._get_image_by_request(cursor, request_id)
            duplicate = stored is None
            if duplicate:
                stored = self._one(cursor, "SELECT %s FROM images WHERE nickname = %%s AND "
                                   "sha256 = %%s" % IMAGE_COLUMNS,
                                   (image.nickname, image.sha256), IMAGE_COLUMNS)
            else:
                for thumb in image.thumbnails:
                    self._insert(cursor, "thumbnails", dict(
                        image_id=stored["id"], size=thumb.size, mime_type=thumb.mime_type,
                        width=thumb.width, height=thumb.height, data=thumb.data))
            self._ensure_upload(cursor, request_id, image.nickname, now)
            self._execute(cursor, "UPDATE uploads SET status = %s, image_id = %s, duplicate = %s, "
                          "error = NULL, updated_at = %s WHERE request_id = %s",
                          (STORED, stored["id"], int(duplicate), now, request_id))
            return dict(stored, duplicate=duplicate)
        return await self._run(store, write=True)

    def _upload_deleted(self, cursor, request_id):
        """Whether the upload's image was deleted: a redelivered or late copy must
        not store it again.  (The delete's transaction writes the upload's row, so
        PostgreSQL orders the two by the row lock; SQLite has one writer.)"""
        self._execute(cursor, "UPDATE uploads SET updated_at = updated_at WHERE request_id = %s",
                      (request_id,))
        upload = self._get_upload(cursor, request_id)
        return upload is not None and upload["status"] == DELETED

    async def delete_image(self, image_id):
        def delete(cursor):
            image = self._one(cursor, "SELECT %s FROM images WHERE id = %%s" % IMAGE_COLUMNS,
                              (image_id,), IMAGE_COLUMNS)
            if image is None:
                return None
            now = utc_now()
            self._execute(cursor, "INSERT INTO deleted_images (image_id, request_id, nickname, "
                          "deleted_at) VALUES (%s, %s, %s, %s) ON CONFLICT (image_id) DO NOTHING",
                          (image_id, image["request_id"], image["nickname"], now))
            self._execute(cursor, "UPDATE uploads SET status = %s, image_id = NULL, "
                          "updated_at = %s WHERE image_id = %s OR request_id = %s",
                          (DELETED, now, image_id, image["request_id"]))
            self._execute(cursor, "DELETE FROM thumbnails WHERE image_id = %s", (image_id,))
            self._execute(cursor, "DELETE FROM images WHERE id = %s", (image_id,))
            return image
        return await self._run(delete, write=True)

    async def deleted_image(self, image_id):
        columns = "image_id, request_id, nickname, announced"
        record = await self._run(lambda cursor: self._one(
            cursor, "SELECT %s FROM deleted_images WHERE image_id = %%s" % columns,
            (image_id,), columns))
        if record is not None:
            record["announced"] = bool(record["announced"])
        return record

    async def mark_deletion_announced(self, image_id):
        await self._run(lambda cursor: self._execute(
            cursor, "UPDATE deleted_images SET announced = 1 WHERE image_id = %s", (image_id,)),
            write=True)

    def _get_image_by_request(self, cursor, request_id):
        return self._one(cursor, "SELECT %s FROM images WHERE request_id = %%s" % IMAGE_COLUMNS,
                         (request_id,), IMAGE_COLUMNS)

    async def get_image(self, image_id):
        return await self._run(lambda cursor: self._one(
            cursor, "SELECT %s FROM images WHERE id = %%s" % IMAGE_COLUMNS,
            (image_id,), IMAGE_COLUMNS))

    async def get_image_content(self, image_id):
        def select(cursor):
            row = self._execute(cursor, "SELECT data, mime_type, sha256 FROM images WHERE id = %s",
                                (image_id,)).fetchone()
            return None if row is None else (bytes(row[0]), row[1], row[2])
        return await self._run(select)

    async def get_thumbnail(self, image_id, size):
        def select(cursor):
            row = self._execute(cursor, "SELECT data, mime_type, width, height FROM thumbnails "
                                "WHERE image_id = %s AND size = %s", (image_id, size)).fetchone()
            return None if row is None else (bytes(row[0]), row[1], row[2], row[3])
        return await self._run(select)

    async def list_images(self, nickname=None, before_id=None, limit=24):
        # Both filters ride the index images_nickname_id (nickname, id), or the primary key.
        conditions, params = [], []
        if nickname is not None:
            conditions.append("nickname = %s")
            params.append(nickname)
        if before_id is not None:
            conditions.append("id < %s")
            params.append(before_id)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        query = "SELECT %s FROM images%s ORDER BY id DESC LIMIT %%s" % (IMAGE_COLUMNS, where)

        def select(cursor):
            rows = self._execute(cursor, query, (*params, limit)).fetchall()
            return [self._row(IMAGE_COLUMNS, row) for row in rows]
        return await self._run(select)

    # -- dead letters -------------------------------------------------------

    async def record_dead_letter(self, request_id, nickname, filename, content_type, data,
                                 attempts, error):
        def record(cursor):
            now = utc_now()
            self._execute(cursor, "INSERT INTO dead_letters (request_id, nickname, filename, "
                          "content_type, data, attempts, error, created_at) VALUES "
                          "(%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO UPDATE "
                          "SET attempts = excluded.attempts, error = excluded.error",
                          (request_id, nickname, filename, content_type, data, attempts,
                           error, now))
            self._ensure_upload(cursor, request_id, nickname, now)
            self._execute(cursor, "UPDATE uploads SET status = %s, error = %s, attempts = %s, "
                          "dead_lettered = 1, updated_at = %s WHERE request_id = %s "
                          "AND status <> %s", (FAILED, error, attempts, now, request_id, STORED))
            return self._get_upload(cursor, request_id)
        return await self._run(record, write=True)

    async def list_dead_letters(self, limit=100):
        def select(cursor):
            rows = self._execute(cursor, "SELECT %s, LENGTH(data) FROM dead_letters ORDER BY "
                                 "created_at DESC LIMIT %%s" % DEAD_LETTER_COLUMNS,
                                 (limit,)).fetchall()
            return [dict(self._row(DEAD_LETTER_COLUMNS, row[:-1]), size=row[-1]) for row in rows]
        return await self._run(select)

    async def get_dead_letter(self, request_id):
        def select(cursor):
            row = self._execute(cursor, "SELECT %s, data FROM dead_letters WHERE request_id = "
                                "%%s" % DEAD_LETTER_COLUMNS, (request_id,)).fetchone()
            if row is None:
                return None
            return dict(self._row(DEAD_LETTER_COLUMNS, row[:-1]), data=bytes(row[-1]))
        return await self._run(select)

    async def requeue_dead_letter(self, request_id):
        await self._run(lambda cursor: self._execute(
            cursor, "UPDATE uploads SET status = %s, error = NULL, attempts = 0, "
            "dead_lettered = 0, updated_at = %s WHERE request_id = %s AND status <> %s",
            (QUEUED, utc_now(), request_id, STORED)), write=True)

    async def restore_dead_letter(self, request_id):
        return await self._run(lambda cursor: self._execute(
            cursor, "UPDATE uploads SET status = %s, dead_lettered = 1, updated_at = %s, "
            "attempts = (SELECT attempts FROM dead_letters WHERE request_id = %s), "
            "error = (SELECT error FROM dead_letters WHERE request_id = %s) "
            "WHERE request_id = %s AND status = %s",
            (FAILED, utc_now(), request_id, request_id, request_id, QUEUED)).rowcount == 1,
            write=True)

    async def forget_dead_letter(self, request_id):
        await self._run(lambda cursor: self._execute(
            cursor, "DELETE FROM dead_letters WHERE request_id = %s AND NOT EXISTS "
            "(SELECT 1 FROM uploads WHERE request_id = %s AND dead_lettered = 1)",
            (request_id, request_id)), write=True)

    # -- notifier bookkeeping ---------------------------------------------

    async def event_done(self, key):
        return await self._run(lambda cursor: self._execute(
            cursor, "SELECT 1 FROM events_done WHERE key = %s", (key,)).fetchone() is not None)

    async def record_event(self, key):
        await self._run(lambda cursor: self._execute(
            cursor, "INSERT INTO events_done (key, done_at) VALUES (%s, %s) "
            "ON CONFLICT (key) DO NOTHING", (key, utc_now())), write=True)

    # -- deliveries (webhooks, e-mail) ------------------------------------

    def _get_delivery(self, cursor, delivery_id):
        row = self._one(cursor, "SELECT %s FROM deliveries WHERE id = %%s" % DELIVERY_COLUMNS,
                        (delivery_id,), DELIVERY_COLUMNS)
        if row is not None:
            row["payload"] = json.loads(row["payload"])
        return row

    async def get_delivery(self, delivery_id):
        return await self._run(self._get_delivery, delivery_id)

    def _insert_delivery(self, cursor, action, target, message_id, event, payload, now):
        self._execute(cursor, "INSERT INTO deliveries (action, target, message_id, event, "
                      "payload, status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, "
                      "%s, %s) ON CONFLICT (action, target, message_id) DO NOTHING",
                      (action, target, message_id, event, json.dumps(payload), PENDING, now, now))
        return self._execute(cursor, "SELECT id FROM deliveries WHERE action = %s AND "
                             "target = %s AND message_id = %s",
                             (action, target, message_id)).fetchone()[0]

    async def create_delivery(self, action, target, message_id, event, payload):
        def create(cursor):
            delivery_id = self._insert_delivery(cursor, action, target, message_id, event,
                                                payload, utc_now())
            return self._get_delivery(cursor, delivery_id)
        return await self._run(create, write=True)

    async def claim_delivery(self, delivery_id, tries, owner, now, lease):
        def claim(cursor):
            claimed = self._execute(
                cursor, "UPDATE deliveries SET lease_owner = %s, lease_until = %s, "
                "updated_at = %s WHERE id = %s AND status = %s AND tries = %s AND "
                "(lease_until IS NULL OR lease_until < %s)",
                (owner, now + lease, utc_now(), delivery_id, PENDING, tries, now)).rowcount
            delivery = self._get_delivery(cursor, delivery_id)
            if delivery is None:
                return "missing", None
            if claimed:
                return "claimed", delivery
            if delivery["status"] != PENDING or delivery["tries"] > tries:
                return "done", delivery
            return "busy", delivery
        return await self._run(claim, write=True)

    async def settle_delivery(self, delivery_id, status, tries, error=None):
        await self._run(lambda cursor: self._execute(
            cursor, "UPDATE deliveries SET status = %s, tries = %s, last_error = %s, "
            "lease_owner = NULL, lease_until = NULL, updated_at = %s WHERE id = %s",
            (status, tries, error, utc_now(), delivery_id)), write=True)

    async def list_failed_deliveries(self, limit=100):
        def select(cursor):
            rows = self._execute(cursor, "SELECT %s FROM deliveries WHERE status IN (%%s, %%s) "
                                 "ORDER BY updated_at DESC LIMIT %%s" % DELIVERY_COLUMNS,
                                 (DEAD, GONE, limit)).fetchall()
            return [dict(self._row(DELIVERY_COLUMNS, row), payload=json.loads(row[5]))
                    for row in rows]
        return await self._run(select)

    async def requeue_delivery(self, delivery_id):
        def requeue(cursor):
            before = self._get_delivery(cursor, delivery_id)
            if before is None or before["status"] not in (DEAD, GONE):
                return before, False
            self._execute(cursor, "UPDATE deliveries SET status = %s, tries = 0, "
                          "lease_owner = NULL, lease_until = NULL, updated_at = %s "
                          "WHERE id = %s", (PENDING, utc_now(), delivery_id))
            return before, True
        return await self._run(requeue, write=True)

    async def gather_digest_event(self, action, target, message_id, payload):
        await self._run(lambda cursor: self._execute(
            cursor, "INSERT INTO digest_events (action, target, message_id, payload, created_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (action, target, message_id) DO NOTHING",
            (action, target, message_id, json.dumps(payload), utc_now())), write=True)

    async def count_digest_events(self, action, target):
        return await self._run(lambda cursor: self._execute(
            cursor, "SELECT COUNT(*) FROM digest_events WHERE action = %s AND target = %s AND "
            "delivery_id IS NULL", (action, target)).fetchone()[0])

    async def close_digest(self, action, target, message_id, gathered_before):
        def close(cursor):
            due = self._execute(cursor, "SELECT 1 FROM digest_events WHERE action = %s AND "
                                "target = %s AND delivery_id IS NULL AND created_at <= %s",
                                (action, target, gathered_before)).fetchone()
            if due is None:
                return None
            delivery_id = self._insert_delivery(cursor, action, target, message_id, "digest",
                                                [], utc_now())
            # Rows another process is closing at this moment are locked until it
            # commits, and then no longer open: each event goes in one digest.
            self._execute(cursor, "UPDATE digest_events SET delivery_id = %s WHERE action = %s "
                          "AND target = %s AND delivery_id IS NULL",
                          (delivery_id, action, target))
            payloads = [json.loads(row[0]) for row in self._execute(
                cursor, "SELECT payload FROM digest_events WHERE delivery_id = %s "
                "ORDER BY created_at, message_id", (delivery_id,)).fetchall()]
            if not payloads:
                self._execute(cursor, "DELETE FROM deliveries WHERE id = %s", (delivery_id,))
                return None
            self._execute(cursor, "UPDATE deliveries SET payload = %s WHERE id = %s",
                          (json.dumps(payloads), delivery_id))
            return self._get_delivery(cursor, delivery_id)
        return await self._run(close, write=True)

    async def unsent_digests(self, action):
        def select(cursor):
            rows = self._execute(cursor, "SELECT id FROM deliveries WHERE action = %s AND "
                                 "event = %s AND status = %s AND tries = 0 AND "
                                 "lease_until IS NULL", (action, "digest", PENDING)).fetchall()
            return [self._get_delivery(cursor, row[0]) for row in rows]
        return await self._run(select)

    async def close(self):
        self._executor.shutdown(wait=True)
