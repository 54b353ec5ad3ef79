"""What every handler shares: the context, JSON errors and JSON answers."""

import json

import tornado.web
from tornado.log import app_log

from storage import StorageError


def implemented_methods(handler_class):
    """The HTTP methods ``handler_class`` defines (Tornado answers the others 405)."""
    return [method for method in handler_class.SUPPORTED_METHODS
            if getattr(handler_class, method.lower(), None)
            is not getattr(tornado.web.RequestHandler, method.lower(), None)]


class ApiError(tornado.web.HTTPError):
    """An error answered as ``{"error": ..., "detail": ...}`` with ``status``
    (and ``headers``: set in write_error, since send_error clears any set before)."""

    def __init__(self, status, error, detail=None, retry_after=None, headers=None):
        super().__init__(status, reason=None)
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        if retry_after:
            self.headers["Retry-After"] = str(retry_after)


# Pages load scripts and styles from static/ only: no inline script can run.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
               "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'; form-action 'self'")


class BaseHandler(tornado.web.RequestHandler):
    # Sent with every answer; handlers of raw bytes send a stricter one.
    content_security_policy = PAGE_POLICY

    def initialize(self, context):
        self.context = context
        self.config = context.config
        context.requests.add(self)

    def on_finish(self):
        self.context.requests.discard(self)

    def on_connection_close(self):
        self.context.requests.discard(self)
        super().on_connection_close()

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", self.content_security_policy)

    def check_xsrf_cookie(self):
        # A method this handler does not serve is answered 405 (or the unknown
        # path 404), not 403: there is nothing to protect.
        if self.request.method in self.allowed_methods():
            super().check_xsrf_cookie()

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
            app_log.warning("%s %s: database unavailable: %s", self.request.method,
                            self.request.path, value)
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
        self.finish(json.dumps({"error": error, "detail": detail}))

    def error_fields(self, status_code, kwargs):
        """``(status, error, detail)`` for the exception in ``write_error``'s kwargs
        (setting ``Retry-After`` when it asks for one)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StorageError):
            status_code, error, detail = 503, "database unavailable", str(exc)
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
