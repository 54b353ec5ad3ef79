"""Live updates: ``GET /api/events``, a WebSocket of every ``image.*`` event.

Each web process hears every event through a private queue of its own (see
``Broker.subscribe``), so every web node sees every upload, however many there
are.  ``EventHub`` fans each event out, as one JSON text frame, to this process's
sockets (``?nickname=`` keeps one nickname's events).  A client that does not
keep up is dropped once ``MAX_PENDING`` frames wait to be written to it, so no
client can grow the process's memory.
"""

import collections
import json
import logging
import urllib.parse
from datetime import datetime, timezone

import tornado.websocket

from handlers.base import implemented_methods
from handlers.openapi import operation

log = logging.getLogger(__name__)

MAX_PENDING = 256          # frames queued for one client before it is dropped
PING_INTERVAL = 25         # seconds (the application's websocket_ping_interval)
MAX_MESSAGE_SIZE = 1024    # bytes a client may send (it has nothing to say)
TOO_SLOW = 1013            # WebSocket close code "try again later"
RECENT = 20                # events the hub keeps, newest first


class EventHub:
    """This process's sockets, and the events it hears for them; the latest
    ``RECENT`` it heard, with the time it heard each (for the dashboard)."""

    def __init__(self):
        self.clients = set()
        self.listeners = []  # functions of the process that act on events (the cache's)
        self.recent = collections.deque(maxlen=RECENT)

    def on_message(self, message):
        try:
            event = json.loads(message.body)
            text = json.dumps(event)
        except ValueError:
            log.warning("dropping an event that is not JSON: %r", message.body[:200])
            return
        if not isinstance(event, dict):
            return
        if isinstance(event.get("event"), str):
            self.recent.appendleft(dict(event, heard_at=datetime.now(timezone.utc).isoformat(
                timespec="milliseconds")))
        for listener in self.listeners:
            listener(event)
        for client in list(self.clients):
            client.send(event, text)


class EventsHandler(tornado.websocket.WebSocketHandler):
    """``GET /api/events[?nickname=]``: one JSON text frame per event."""

    def initialize(self, context):
        self.context = context
        self.hub = context.events
        self.pending = 0

    @operation(summary="Live events over a WebSocket: one JSON text frame per event",
               tags=["images"], parameters=[{
                   "name": "nickname", "in": "query", "schema": {"type": "string"},
                   "description": "only this nickname's events"}], responses={
        101: {"description": "switched to the WebSocket protocol"},
        400: {"description": "not a WebSocket handshake",
              "content": {"text/html": {"schema": {"type": "string"}}}},
        403: {"description": "the Origin is neither this host nor one of ALLOWED_ORIGINS",
              "content": {"text/html": {"schema": {"type": "string"}}}},
        426: {"description": "a WebSocket version other than 13", "headers": {
            "Sec-WebSocket-Version": {"required": True, "schema": {"type": "string"}}}}})
    async def get(self, *args, **kwargs):
        await super().get(*args, **kwargs)

    def check_xsrf_cookie(self):
        pass  # only GET is served (never XSRF-checked): any other method is a 405, not a 403

    def write_error(self, status_code, **kwargs):
        if status_code == 405:  # as BaseHandler's: name the allowed method (RFC 9110 15.5.6)
            self.set_header("Allow", ", ".join(implemented_methods(type(self))))
        super().write_error(status_code, **kwargs)

    def check_origin(self, origin):
        """The page's own host, or one of ALLOWED_ORIGINS (scheme://host[:port])."""
        if origin.rstrip("/") in self.context.config.allowed_origins:
            return True
        return urllib.parse.urlsplit(origin).netloc.lower() == self.request.host.lower()

    def open(self):
        self.nickname = self.get_argument("nickname", None) or None
        self.hub.clients.add(self)

    def on_message(self, message):
        pass  # the socket only carries events to the page

    def on_close(self):
        self.hub.clients.discard(self)

    def send(self, event, text):
        if self.nickname is not None and event.get("nickname") != self.nickname:
            return
        if self.pending >= MAX_PENDING:
            log.warning("events: dropping a client that does not keep up (%d frames waiting)",
                        self.pending)
            self.hub.clients.discard(self)
            self.close(TOO_SLOW, "too slow")
            return
        try:
            written = self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            self.hub.clients.discard(self)
            return
        self.pending += 1
        written.add_done_callback(self._written)

    def _written(self, future):
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # a closed stream: on_close forgets the client
