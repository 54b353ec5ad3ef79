"""The two message contracts (DESIGN.md, README "Messages").

Upload: exchange ``image-processing``, routing key ``image-processing-queue``,
the raw image bytes as body, ``message_id`` = request id, ``content_type`` = the
sniffed mime type, persistent, headers ``nickname``, ``filename``, ``size``.

Notification: exchange ``photo-app``, routing key = the event name, a JSON body
with ``event``, ``image_id``, ``request_id``, ``nickname``, ``mime_type``,
``width``, ``height``, ``size``, ``url`` (and ``error`` for ``image.failed``);
``message_id`` = ``"{event}:{request_id}"``, so a notification published twice
for one upload carries one id.
"""

import json
from dataclasses import dataclass

MAX_NICKNAME = 100
# Headers the processor adds when an upload goes to a retry or dead-letter queue.
ATTEMPTS_HEADER = "x-attempts"  # attempts that failed so far
ERROR_HEADER = "x-error"        # why the last one failed
# Header a consumer adds when it parks a message (consumers/base.py): the queue it came from.
PARKED_FROM_HEADER = "x-parked-from"
MAX_REQUEST_ID = 200


class InvalidUpload(ValueError):
    """An upload message (or form) that can never be processed."""


# Characters that reorder the text around them (bidirectional overrides and isolates).
BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


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
    """The nickname trimmed, or InvalidUpload: required, 1-100 characters."""
    nickname = (value or "").strip()
    if not nickname:
        raise InvalidUpload("nickname is required")
    if len(nickname) > MAX_NICKNAME:
        raise InvalidUpload("nickname is longer than %d characters" % MAX_NICKNAME)
    if has_control_characters(nickname):
        raise InvalidUpload("nickname contains control characters")
    return nickname


@dataclass
class Upload:
    request_id: str
    nickname: str
    filename: str
    mime_type: str
    data: bytes

    def publish_args(self):
        """Keyword arguments for ``Broker.publish`` (after exchange and routing key)."""
        return dict(body=self.data, message_id=self.request_id, content_type=self.mime_type,
                    headers={"nickname": self.nickname, "filename": self.filename,
                             "size": len(self.data)})

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


def event_message_id(event, request_id):
    return "%s:%s" % (event, request_id)


def deletion_event(image_id, nickname, request_id):
    """``(message_id, body)`` of ``image.deleted``: the same id on every publish of it."""
    body = {"event": "image.deleted", "image_id": image_id, "nickname": nickname,
            "request_id": request_id}
    return event_message_id("image.deleted", image_id), json.dumps(body).encode()


def image_event(event, request_id, image=None, upload=None, error=None):
    """The JSON body of a notification, from a stored image or a failed upload."""
    body = {"event": event, "request_id": request_id, "image_id": None,
            "nickname": upload.nickname if upload else None,
            "mime_type": upload.mime_type if upload else None,
            "width": None, "height": None,
            "size": len(upload.data) if upload else None, "url": None}
    if image is not None:
        body.update(image_id=image["id"], nickname=image["nickname"],
                    mime_type=image["mime_type"], width=image["width"],
                    height=image["height"], size=image["size"],
                    url="/api/images/%s/content" % image["id"],
                    duplicate=bool(image.get("duplicate")))
    if error is not None:
        body["error"] = error
    return json.dumps(body).encode()
