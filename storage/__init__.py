"""Where images and upload statuses live.

``Storage`` is the contract every backend keeps; ``open_storage`` picks one from
the configured URL.  Backends run their blocking database calls in their own
thread pool, so every method here is a coroutine that is safe on the IOLoop.

An upload moves ``queued`` -> ``processing`` -> ``stored`` | ``failed``, or
``queued`` -> ``refused`` when the broker did not take it.  A ``queued`` upload
has no row (only a requeued dead letter's row says ``queued``): the web tier
writes nothing when it accepts one, the processor writes the row when it begins
it, and a refusal writes one ``refused``; until then the status route knows it
from its request id (``uploads.RequestIds``).  The request id is unique across
both tables, which is what makes a redelivered upload store once.
"""

from dataclasses import dataclass, field

QUEUED, PROCESSING, STORED, FAILED = "queued", "processing", "stored", "failed"
# An upload answered 503: the broker did not confirm it.  Should the message
# reach the processor anyway, it is dropped, since its client was told to retry.
REFUSED = "refused"
# The upload's image was deleted (DELETE /api/images/{id}); a redelivery never brings it back.
DELETED = "deleted"
# A webhook or e-mail delivery: ``pending`` (waiting, being sent or to be retried),
# then ``delivered``; ``gone`` (the endpoint answered 410) or ``dead`` (out of tries)
# are the failed ones, listed and sendable again.
PENDING, DELIVERED, GONE, DEAD = "pending", "delivered", "gone", "dead"


class StorageError(Exception):
    """The database could not be reached or refused the call (a transient fault)."""


@dataclass
class NewImage:
    """A validated image, ready to store, with its thumbnails (objects with
    ``size``, ``mime_type``, ``width``, ``height`` and ``data``)."""
    nickname: str
    mime_type: str
    data: bytes
    width: int
    height: int
    sha256: str
    taken_at: str = None
    camera: str = None
    thumbnails: list = field(default_factory=list)

    @property
    def size(self):
        return len(self.data)


class Storage:
    """The storage contract.  Images are dicts with ``id``, ``request_id``,
    ``nickname``, ``mime_type``, ``size``, ``width``, ``height``, ``sha256``,
    ``created_at`` (ISO 8601, UTC), ``taken_at`` and ``camera`` (from EXIF, or
    None); uploads are dicts with ``request_id``, ``nickname``, ``status``,
    ``image_id``, ``duplicate``, ``error``, ``created_at`` and ``updated_at``."""

    db_type = None

    async def migrate(self):
        """Bring the schema to the current version; safe to race with other processes."""
        raise NotImplementedError

    async def ping(self):
        """Raise StorageError unless the database answers."""
        raise NotImplementedError

    async def request_id_secret(self):
        """The key of the request ids (``uploads.RequestIds``), the same for every
        process of the database: made by the first that asks, read by the others."""
        raise NotImplementedError

    async def refuse_upload(self, request_id, nickname, reason):
        """Record an upload the broker did not confirm as ``refused``, unless its
        row exists; True if it is refused, False when the processor had already
        taken it (it is in the broker).  Repeating the call answers the same."""
        raise NotImplementedError

    async def get_upload(self, request_id):
        raise NotImplementedError

    async def mark_processing(self, request_id, nickname, created_at=None):
        """The processor begins an upload: its row ``processing`` (``created_at``,
        ISO 8601, when it was accepted, else now), or one more attempt counted on
        the row there is (``queued`` -> ``processing``).  Returns the upload, whose
        status may already be final (``refused`` included)."""
        raise NotImplementedError

    async def mark_failed(self, request_id, nickname, reason):
        """End an upload ``failed`` with ``reason`` (never overrides ``stored``)."""
        raise NotImplementedError

    async def upload_activity(self, since, sample):
        """What uploads did since ``since`` (ISO 8601), for the dashboard, by UTC
        minute (``"2026-12-02T05:01"``): ``accepted`` (rows by ``created_at``, the
        time the web tier accepted the upload, refused ones left out), ``stored``
        and ``failed`` (rows whose status that is, by ``updated_at``, when they got
        there); and ``stored_seconds``, accepted-to-stored seconds of the last
        ``sample`` uploads stored since then, newest first."""
        raise NotImplementedError

    async def store_image(self, request_id, image):
        """Store ``image`` (a NewImage) and its thumbnails and mark the upload
        ``stored``, in one transaction; None, storing nothing, when the upload's
        image was deleted meanwhile.  A request id stored before returns the
        image stored then; the same bytes stored before under the same nickname
        are not stored again: the upload points at that image, marked duplicate.
        Returns the image, with ``duplicate`` saying which happened."""
        raise NotImplementedError

    async def get_image(self, image_id):
        raise NotImplementedError

    async def get_image_content(self, image_id):
        """Return ``(data, mime_type, sha256)`` or None."""
        raise NotImplementedError

    async def get_thumbnail(self, image_id, size):
        """Return ``(data, mime_type, width, height)`` or None."""
        raise NotImplementedError

    async def list_images(self, nickname=None, before_id=None, limit=24):
        """Up to ``limit`` images (metadata, no bytes), newest first (by id), of
        ``nickname`` if given, with an id below ``before_id`` if given: keyset
        pagination, so pages neither repeat nor skip while uploads arrive."""
        raise NotImplementedError

    async def delete_image(self, image_id):
        """Remove the image and its thumbnails, end every upload that points at it
        ``deleted`` and keep a tombstone (``deleted_image``), in one transaction.
        Returns the image as it was, or None when there is no such image."""
        raise NotImplementedError

    async def deleted_image(self, image_id):
        """The tombstone of a deleted image (``image_id``, ``request_id``,
        ``nickname``, ``announced``), or None."""
        raise NotImplementedError

    async def mark_deletion_announced(self, image_id):
        """The ``image.deleted`` event of the tombstone was confirmed by the broker."""
        raise NotImplementedError

    async def record_dead_letter(self, request_id, nickname, filename, content_type, data,
                                 attempts, error):
        """Keep an upload that ran out of attempts (bytes included, so it can be
        re-queued) and end it ``failed``, marked dead-lettered.  Returns the upload."""
        raise NotImplementedError

    async def list_dead_letters(self, limit=100):
        """Dead letters, newest first, without their bytes (``size`` instead)."""
        raise NotImplementedError

    async def get_dead_letter(self, request_id):
        """A dead letter with its ``data``, or None."""
        raise NotImplementedError

    async def requeue_dead_letter(self, request_id):
        """Put a dead letter's upload back to ``queued`` with no attempts counted,
        before the caller publishes it again.  The dead letter stays: until the
        broker has confirmed the new message it is the only copy of the bytes."""
        raise NotImplementedError

    async def restore_dead_letter(self, request_id):
        """Undo ``requeue_dead_letter`` when the publish failed: ``queued`` ->
        ``failed``, dead-lettered, with the letter's attempts and error.  True if
        so, False when the processor had already taken it (it is in the broker)."""
        raise NotImplementedError

    async def forget_dead_letter(self, request_id):
        """Remove the dead letter once its message is in the broker again, unless
        the upload was dead-lettered again meanwhile (then the letter is current)."""
        raise NotImplementedError

    async def event_done(self, key):
        """True once ``record_event(key)`` has been called (notifier idempotency)."""
        raise NotImplementedError

    async def record_event(self, key):
        raise NotImplementedError

    # Deliveries are dicts with ``id``, ``action``, ``target``, ``message_id``,
    # ``event``, ``payload`` (decoded JSON), ``status``, ``tries``, ``last_error``,
    # ``lease_owner``, ``lease_until`` (Unix seconds), ``created_at``, ``updated_at``.

    async def create_delivery(self, action, target, message_id, event, payload):
        """Record a ``pending`` delivery; one per (action, target, message id), so the
        same event recorded twice returns the delivery recorded first."""
        raise NotImplementedError

    async def get_delivery(self, delivery_id):
        raise NotImplementedError

    async def claim_delivery(self, delivery_id, tries, owner, now, lease):
        """Take the delivery for ``lease`` seconds if it is pending after ``tries``
        tries and nobody else holds a live lease.  Returns ``(outcome, delivery)``:
        ``claimed``; ``done`` (settled, or a later try exists: drop the message);
        ``busy`` (another sender holds it, or its last try is not recorded yet:
        look again later); ``missing``."""
        raise NotImplementedError

    async def settle_delivery(self, delivery_id, status, tries, error=None):
        """Release the lease; record ``status``, the tries made and the last error."""
        raise NotImplementedError

    async def list_failed_deliveries(self, limit=100):
        """``dead`` and ``gone`` deliveries, most recently failed first."""
        raise NotImplementedError

    async def requeue_delivery(self, delivery_id):
        """A failed delivery back to ``pending`` with no tries.  Returns
        ``(delivery as it was, requeued)``; ``(None, False)`` if there is none."""
        raise NotImplementedError

    async def gather_digest_event(self, action, target, message_id, payload):
        """Keep an event for the next digest (once per message id)."""
        raise NotImplementedError

    async def count_digest_events(self, action, target):
        """Events gathered and not yet in a digest."""
        raise NotImplementedError

    async def close_digest(self, action, target, message_id, gathered_before):
        """If an open event was gathered at or before ``gathered_before`` (ISO 8601),
        put every open event into one new pending delivery (payload: their list) and
        return it; else None.  Each event lands in one digest, whoever closes it."""
        raise NotImplementedError

    async def unsent_digests(self, action):
        """Digest deliveries never tried nor claimed (their message may be lost)."""
        raise NotImplementedError

    async def close(self):
        raise NotImplementedError

    def describe(self):
        """One line for the start-up log: which database, where."""
        raise NotImplementedError


def open_storage(config):
    """The backend named by ``config.database_url`` (not yet migrated)."""
    if config.db_type == "postgres":
        from storage.postgres import PostgresStorage
        return PostgresStorage(config.database_url, pool_size=config.db_pool_size)
    from storage.sqlite import SQLiteStorage
    return SQLiteStorage(config.sqlite_path, threads=config.db_pool_size)
