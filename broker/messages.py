"""The notification contract (DESIGN.md, README "Message contracts"), and the
headers the processor adds to an upload it retries or dead-letters.  (The upload
message itself is ``uploads.Upload``.)

Notification: exchange ``photo-app``, routing key = the event name, a JSON body
with ``event``, ``image_id``, ``request_id``, ``nickname``, ``mime_type``,
``width``, ``height``, ``size``, ``url`` (and ``error`` for ``image.failed``);
``message_id`` = ``"{event}:{request_id}"``, so a notification published twice
for one upload carries one id.
"""

import json

# Headers the processor adds when an upload goes to a retry or dead-letter queue.
ATTEMPTS_HEADER = "x-attempts"  # attempts that failed so far
ERROR_HEADER = "x-error"        # why the last one failed
# Header a consumer adds when it parks a message (consumers/base.py): the queue it came from.
PARKED_FROM_HEADER = "x-parked-from"


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
