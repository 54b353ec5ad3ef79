"""Real receivers in the test process: a Tornado webhook endpoint and an SMTP server.

Each runs on 127.0.0.1 in a thread of its own (aiosmtpd's ``Controller`` makes its
own; the webhook receiver runs its own IOLoop), so they answer app code running
in the test's IOLoop and app processes started by the test alike.
"""

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import threading

import standardwebhooks
import tornado.httpserver
import tornado.web
from aiosmtpd.controller import Controller

from tests.conftest import free_port

# whsec_ + base64 of 32 fixed bytes.
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


class Delivery:
    """One request the webhook receiver took, verified two ways."""

    def __init__(self, path, headers, body, answered):
        self.path, self.headers, self.body, self.answered = path, headers, body, answered
        self.id = headers.get("webhook-id")
        self.payload = None
        self.errors = []
        try:
            self.payload = standardwebhooks.Webhook(SECRET).verify(body, headers)
        except Exception as exc:  # kept, so the test shows why
            self.errors.append("standardwebhooks: %r" % exc)
        if not hmac_matches(headers, body):
            self.errors.append("the HMAC computed here does not match")

    @property
    def verified(self):
        return not self.errors


def hmac_matches(headers, body):
    """The signature checked by hand, as the README describes it."""
    key = base64.b64decode(SECRET[len("whsec_"):])
    signed = b"%s.%s.%s" % (headers.get("webhook-id", "").encode(),
                            headers.get("webhook-timestamp", "").encode(), body)
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [sig.split(",", 1)[1] for sig in headers.get("webhook-signature", "").split()
             if sig.startswith("v1,")]
    return any(hmac.compare_digest(expected, sig) for sig in given)


class _Endpoint(tornado.web.RequestHandler):
    def initialize(self, receiver):
        self.receiver = receiver

    async def post(self):
        code, hold = self.receiver._take(self.request)
        if hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, hold.wait, 60)
        self.set_status(code)
        self.finish("ok" if code < 300 else "no")


class WebhookReceiver:
    """``answer(path, 500, 500)`` scripts the first answers of a path (then 200);
    ``hold(path)`` keeps the next request of a path unanswered until the returned
    event is set; ``received(path)`` lists what came, in order."""

    def __init__(self, port=None, addresses=("127.0.0.1",)):
        self.port = port or free_port()
        self.addresses = addresses
        self._lock = threading.Lock()
        self._answers = {}
        self._holds = {}
        self._received = []
        self._loop = None
        self._stopped = None

    def url(self, path="/hook", host="127.0.0.1"):
        return "http://%s:%d%s" % (host, self.port, path)

    def answer(self, path, *codes):
        with self._lock:
            self._answers.setdefault(path, []).extend(codes)

    def hold(self, path):
        event = threading.Event()
        with self._lock:
            self._holds[path] = event
        return event

    def received(self, path=None):
        with self._lock:
            return [d for d in self._received if path in (None, d.path)]

    def _take(self, request):
        with self._lock:
            script = self._answers.get(request.path) or []
            code = script.pop(0) if script else 200
            headers = {k.lower(): v for k, v in request.headers.get_all()}
            self._received.append(Delivery(request.path, headers, request.body, code))
            return code, self._holds.pop(request.path, None)

    def start(self):
        started = threading.Event()
        failure = []

        async def serve():
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            server = tornado.httpserver.HTTPServer(
                tornado.web.Application([(r"/.*", _Endpoint, {"receiver": self})]))
            try:
                for address in self.addresses:
                    server.listen(self.port, address)
            except OSError as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            await self._stopped.wait()
            server.stop()
            await server.close_all_connections()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self):
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)


class _Mailbox:
    def __init__(self):
        self.messages = []  # (envelope sender, recipients, parsed message)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


class SMTPReceiver:
    """aiosmtpd's Controller on 127.0.0.1:``port``, started when the test says so."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.mailbox = _Mailbox()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)

    @property
    def url(self):
        return "smtp://127.0.0.1:%d" % self.port

    def start(self):
        self.controller.start()
        return self

    def messages(self):
        with self.mailbox.lock:
            return list(self.mailbox.messages)

    def stop(self):
        try:
            self.controller.stop()
        except AssertionError:
            pass  # never started
