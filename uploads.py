"""An upload: what it holds, the rules its fields keep, and its message form.

The web tier builds one from a request (``handlers/upload.py``), the processor
from a message (``Upload.from_message``); both go through the same rules, so an
upload published by another AMQP client is judged as one sent over HTTP.  The
message contract is in the README ("Message contracts"): exchange
``image-processing``, routing key ``image-processing-queue``, the raw bytes as
body, ``message_id`` = request id, ``content_type`` = the sniffed mime type,
headers ``nickname``, ``filename`` and ``size``.

``RequestIds`` issues the web tier's request ids and recognises them: an upload
answered ``202`` has no row in the database until the processor begins it, and
its status is known from the id alone until then.
"""

import hmac
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone

MAX_NICKNAME = 100
ISSUED_FORM = re.compile(r"[0-9a-f]{32}")
MAX_REQUEST_ID = 200
# Characters that reorder the text around them (bidirectional overrides and isolates).
BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class InvalidUpload(ValueError):
    """An upload (a message or a form) that can never be processed."""


def _is_control(ch):
    return ord(ch) < 32 or 127 <= ord(ch) < 160 or ch in BIDI_CONTROLS


def has_control_characters(text):
    """C0 and C1 controls, DEL, and bidirectional overrides: never in a nickname."""
    return any(_is_control(ch) for ch in text)


def header_text(value):
    """A header's value as text (bytes decoded, None as ""), as another AMQP client may send it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def printable(value):
    """A header's text without control characters: fit to record, whatever a client
    sent (PostgreSQL refuses the NUL character in text)."""
    return "".join(ch for ch in header_text(value) if not _is_control(ch))


def recorded_nickname(value):
    """The nickname to record on an upload that breaks the rules (failed or
    dead-lettered): printable, trimmed, at most MAX_NICKNAME characters."""
    return printable(value).strip()[:MAX_NICKNAME]


def usable_request_id(value):
    """True for a message id that can be recorded as a request id."""
    return bool(value) and len(value) <= MAX_REQUEST_ID and not has_control_characters(value)


def clean_nickname(value):
    """The nickname trimmed, or InvalidUpload: required, 1-100 characters, no controls."""
    nickname = (value or "").strip()
    if not nickname:
        raise InvalidUpload("nickname is required")
    if len(nickname) > MAX_NICKNAME:
        raise InvalidUpload("nickname is longer than %d characters" % MAX_NICKNAME)
    if has_control_characters(nickname):
        raise InvalidUpload("nickname contains control characters")
    return nickname


class RequestIds:
    """Request ids this service can recognise as its own: 32 lowercase hex digits
    (the form of a uuid4 hex) made of the accept time in milliseconds (6 bytes),
    6 random bytes and a tag (4 bytes of an HMAC-SHA256 of the first 12 under
    ``secret``).  Every process sharing the database shares the secret (kept in
    it, ``Storage.request_id_secret``), so any of them recognises an id issued by
    another.  A made-up id passes with odds of one in 2**32; all it gets then is
    a ``queued`` status for an upload that does not exist."""

    TIME, RANDOM, TAG = 6, 6, 4

    def __init__(self, secret):
        self._secret = secret.encode() if isinstance(secret, str) else secret

    def _tag(self, head):
        return hmac.digest(self._secret, head, "sha256")[:self.TAG]

    def issue(self):
        head = (int(datetime.now(timezone.utc).timestamp() * 1000).to_bytes(self.TIME, "big")
                + os.urandom(self.RANDOM))
        return (head + self._tag(head)).hex()

    def accepted_at(self, request_id):
        """When an id issued here was issued (ISO 8601, UTC, as the database keeps
        times); None for any other id."""
        if not ISSUED_FORM.fullmatch(request_id):
            return None
        raw = bytes.fromhex(request_id)
        head, tag = raw[:-self.TAG], raw[-self.TAG:]
        if not hmac.compare_digest(tag, self._tag(head)):
            return None
        millis = int.from_bytes(head[:self.TIME], "big")
        return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(
            timespec="microseconds")


@dataclass
class Upload:
    request_id: str
    nickname: str
    filename: str
    mime_type: str
    data: bytes | memoryview  # in the web tier, a view into the request's body

    def publish_args(self, **headers):
        """Keyword arguments for ``Broker.publish`` (after exchange and routing key):
        the upload message, with ``headers`` added to the contract's own."""
        return message_args(self.data, self.request_id, self.mime_type,
                            {"nickname": self.nickname, "filename": self.filename,
                             "size": len(self.data), **headers})

    @classmethod
    def from_message(cls, message):
        """Read an upload message; InvalidUpload if it breaks the contract."""
        if not message.message_id:
            raise InvalidUpload("the message has no message_id (the request id)")
        if not usable_request_id(message.message_id):
            raise InvalidUpload("the message_id holds control characters or is longer than "
                                "%d characters" % MAX_REQUEST_ID)
        headers = message.headers or {}
        upload = cls(message.message_id, "", printable(headers.get("filename")),
                     printable(message.content_type), message.body)
        upload.nickname = clean_nickname(header_text(headers.get("nickname")))
        return upload


def message_args(body, request_id, mime_type, headers):
    """``Broker.publish`` keyword arguments of an upload message: the one place
    its properties are spelt."""
    return dict(body=body, message_id=request_id, content_type=mime_type, headers=headers)


def forward_args(message, **headers):
    """``Broker.publish`` keyword arguments of an upload message sent on as it came
    (to a retry or dead-letter queue), with ``headers`` added (the processor's
    ``x-attempts`` and ``x-error``)."""
    return message_args(message.body, message.message_id, message.content_type,
                        dict(message.headers or {}, **headers))
