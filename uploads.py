"""An upload: what it holds, the rules its fields keep, and its message form.

The web tier builds one from a request (``handlers/upload.py``), the processor
from a message (``Upload.from_message``); both go through the same rules, so an
upload published by another AMQP client is judged as one sent over HTTP.  The
message contract is in the README ("Message contracts"): exchange
``image-processing``, routing key ``image-processing-queue``, the raw bytes as
body, ``message_id`` = request id, ``content_type`` = the sniffed mime type,
headers ``nickname``, ``filename`` and ``size``.
"""

from dataclasses import dataclass

MAX_NICKNAME = 100
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


@dataclass
class Upload:
    request_id: str
    nickname: str
    filename: str
    mime_type: str
    data: bytes

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
