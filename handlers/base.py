"""What every handler shares: the context, JSON errors and JSON answers, a
request id, and the operator's credentials.

Every request gets an id (``X-Request-Id`` on the answer, on its access log
line, and on every log line about it; an upload's is its request id).  Clients
get faults in plain words; what the driver or broker said goes to the log under
that id, never into an answer.
"""

import hashlib
import hmac
import json
import secrets

import tornado.web
from tornado.log import app_log

from logs import set_request_id
from storage import StorageError


def implemented_methods(handler_class):
    """The HTTP methods ``handler_class`` defines (Tornado answers the others 405)."""
    return [method for method in handler_class.SUPPORTED_METHODS
            if getattr(handler_class, method.lower(), None)
            is not getattr(tornado.web.RequestHandler, method.lower(), None)]


class ApiError(tornado.web.HTTPError):
    """An error answered as ``{"error": ..., "detail": ...}`` with ``status``
    (and ``headers``: set in write_error, since send_error clears any set before)."""

    def __init__(self, status, error, detail=None, retry_after=None, fields=None, headers=None):
        super().__init__(status, reason=None)
        self.error = error
        self.detail = detail
        self.fields = fields or {}  # more of the JSON answer (a 504's status_url)
        self.headers = dict(headers or {})
        if retry_after:
            self.headers["Retry-After"] = str(retry_after)


# A 401 names the scheme to use (RFC 9110 11.6.1).
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# What a client is told about a database fault (the driver's words are logged).
DATABASE_DOWN = "the database is not answering; try again in a few seconds"

# Pages load scripts and styles from static/ only: no inline script can run.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
               "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'; form-action 'self'")


# The signed cookie of an operator signed in at /login (handlers/login.py).
OPERATOR_COOKIE = "operator"
OPERATOR_COOKIE_DAYS = 1


def operator_cookie_value(token):
    """What the operator cookie holds: tied to API_TOKEN, so a new token signs everyone out."""
    return hashlib.sha256(b"photo-app operator:" + token.encode()).hexdigest()


class BaseHandler(tornado.web.RequestHandler):
    # Sent with every answer; handlers of raw bytes send a stricter one.
    content_security_policy = PAGE_POLICY
    # Methods that act for an operator: Authorization: Bearer $API_TOKEN, or the
    # cookie of /login together with the XSRF token (require_operator).
    operator_methods = ()
    _request_id = None

    @property
    def request_id(self):
        if self._request_id is None:
            self._request_id = secrets.token_hex(16)  # 32 hex digits, as uuid4().hex
        return self._request_id

    @request_id.setter
    def request_id(self, value):
        """A request about one upload (its status) goes by that upload's request id."""
        self._request_id = value
        set_request_id(value)
        self.set_header("X-Request-Id", value)

    def initialize(self, context):
        self.context = context
        self.config = context.config
        context.requests.add(self)
        set_request_id(self.request_id)  # every log line about this request (logs.py)

    def on_finish(self):
        self.context.requests.discard(self)

    def on_connection_close(self):
        self.context.requests.discard(self)
        super().on_connection_close()

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", self.content_security_policy)
        self.set_header("X-Request-Id", self.request_id)

    def check_xsrf_cookie(self):
        # A method this handler does not serve is answered 405 (or the unknown
        # path 404), not 403: there is nothing to protect.
        if self.request.method not in self.allowed_methods():
            return
        # An operator's header is an authority a browser never adds on its own, and a
        # request with no credentials at all is answered 401 by require_operator; only
        # the signed-in cookie needs the XSRF token beside it.
        if self.request.method in self.operator_methods and (
                "Authorization" in self.request.headers or not self.signed_in()):
            return
        super().check_xsrf_cookie()

    def signed_in(self):
        """Whether the request carries a valid operator cookie (for the current token)."""
        token = self.config.api_token
        value = self.get_signed_cookie(OPERATOR_COOKIE, max_age_days=OPERATOR_COOKIE_DAYS)
        return bool(token and value and hmac.compare_digest(
            value, operator_cookie_value(token).encode()))

    def require_operator(self):
        """Refuse the request unless it comes from an operator: 403 while API_TOKEN is
        unset, 401 without credentials, 403 with wrong ones."""
        token = self.config.api_token
        if not token:
            raise ApiError(403, "forbidden", "set API_TOKEN to use the operator routes")
        given = self.request.headers.get("Authorization")
        if given is None:
            if self.signed_in():
                return  # and check_xsrf_cookie has checked its XSRF token
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <API_TOKEN>, "
                           "or sign in at /login", headers=BEARER_CHALLENGE)
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <API_TOKEN>",
                           headers=BEARER_CHALLENGE)
        if not hmac.compare_digest(credentials.strip().encode(), token.encode()):
            raise ApiError(403, "forbidden", "the token is not the API token")

    def query_argument(self, name, default=None):
        """The query parameter ``name`` (``default`` when absent), or a 400 when it
        is given more than once: which of the values was meant would be a guess."""
        values = self.get_query_arguments(name)
        if len(values) > 1:
            raise ApiError(400, "bad query", "give %s only once" % name)
        return values[0] if values else default

    def write_json(self, value, status=200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(value))

    def log_exception(self, typ, value, tb):
        if isinstance(value, StorageError):
            app_log.warning("request %s: %s %s: database unavailable: %s", self.request_id,
                            self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    def allowed_methods(self):
        """The HTTP methods this handler serves (those it defines)."""
        return implemented_methods(type(self))

    def write_error(self, status_code, **kwargs):
        status_code, error, detail = self.error_fields(status_code, kwargs)
        self.clear_header("Content-Disposition")
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        fields = exc.fields if isinstance(exc, ApiError) else {}
        self.finish(json.dumps({"error": error, "detail": detail, **fields}))

    def error_fields(self, status_code, kwargs):
        """``(status, error, detail)`` for the exception in ``write_error``'s kwargs
        (setting ``Retry-After`` when it asks for one)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StorageError):
            status_code, error, detail = 503, "database unavailable", DATABASE_DOWN
            self.set_header("Retry-After", "5")
        elif isinstance(exc, ApiError):
            error, detail = exc.error, exc.detail
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif status_code == 405:
            # A 405 names the methods that are allowed, in Allow (RFC 9110 15.5.6).
            allowed = self.allowed_methods()
            self.set_header("Allow", ", ".join(allowed))
            error, detail = self._reason, "%s is not allowed here; use %s" % (
                self.request.method, " or ".join(allowed) or "no method")
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            error, detail = self._reason, exc.log_message
        else:
            error, detail = self._reason, None
        return status_code, error, detail


class NotFoundHandler(BaseHandler):
    """Every unknown path: a JSON 404."""

    def prepare(self):
        raise ApiError(404, "not found", "no route for %s" % self.request.path)
