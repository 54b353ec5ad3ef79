"""HTTP handlers and the one place the Tornado application is built.

Route lists are built per role: a process without the web role serves no HTTP.
Every route is in the OpenAPI document (handlers/openapi.py): its groups are
named (they become the path's parameters) and each method it serves carries
its ``@operation``, or the application is not built.
"""

import logging
import os
import secrets

import tornado.web

from handlers.base import NotFoundHandler
from handlers.dashboard import DashboardHandler, DashboardPageHandler
from handlers.events import MAX_MESSAGE_SIZE, PING_INTERVAL, EventsHandler
from handlers.failed import FailedListHandler, RequeueDeliveryHandler, RequeueHandler
from handlers.health import HealthHandler, ReadyHandler
from handlers.html import StaticHandler
from handlers.login import LoginHandler, LogoutHandler
from handlers.metrics import MetricsHandler
from handlers.images import (ImageContentHandler, ImageHandler, ImagesHandler,
                             ThumbnailHandler, UploadStatusHandler)
from handlers.openapi import OpenApiHandler, openapi_document
from handlers.pages import GalleryHandler, IndexHandler, PhotoHandler, UploadPageHandler
from handlers.seed import DbTypeHandler, NicknameImagesHandler, SniffMimeHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")


def web_routes(context):
    deps = {"context": context}
    return [
        (r"/", IndexHandler, deps),
        (r"/api/images", ImagesHandler, deps),
        (r"/api/uploads/(?P<request_id>[0-9a-zA-Z-]{1,64})", UploadStatusHandler, deps),
        (r"/api/images/(?P<image_id>[0-9]{1,18})", ImageHandler, deps),
        (r"/api/images/(?P<image_id>[0-9]{1,18})/content", ImageContentHandler, deps),
        (r"/api/images/(?P<image_id>[0-9]{1,18})/thumbnail", ThumbnailHandler, deps),
        (r"/api/events", EventsHandler, deps),
        (r"/api/failed", FailedListHandler, deps),
        (r"/api/failed/(?P<request_id>[0-9a-zA-Z-]{1,64})/requeue", RequeueHandler, deps),
        (r"/api/failed/deliveries/(?P<delivery_id>[0-9]{1,18})/requeue", RequeueDeliveryHandler,
         deps),
        (r"/api/dashboard", DashboardHandler, deps),
        (r"/api/openapi\.json", OpenApiHandler, deps),
        (r"/healthz", HealthHandler, deps),
        (r"/readyz", ReadyHandler, deps),
        (r"/metrics", MetricsHandler, deps),
        # pages (the upload page is "/" above)
        (r"/gallery", GalleryHandler, deps),
        (r"/photos/(?P<image_id>[0-9]{1,18})", PhotoHandler, deps),
        (r"/uploads/(?P<request_id>[0-9a-zA-Z-]{1,64})", UploadPageHandler, deps),
        (r"/dashboard", DashboardPageHandler, deps),
        (r"/login", LoginHandler, deps),
        (r"/logout", LogoutHandler, deps),
        # the seed's routes (its POST / is IndexHandler's)
        (r"/images/(?P<nickname>[^/]+)", NicknameImagesHandler, deps),
        (r"/dbtype", DbTypeHandler, deps),
        (r"/sniff-mime", SniffMimeHandler, deps),
    ]


def log_request(handler):
    """One access line per request: status, method, path, route (the handler), duration
    and the request id (``X-Request-Id``; an upload's is its request id); and the
    same route, never the raw path, in the HTTP metrics."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    route = type(handler).__name__
    duration_ms = round(1000.0 * request.request_time(), 2)
    access_log.log(level, "%d %s %s %s %.2fms", status, request.method, request.uri, route,
                   duration_ms, extra={"method": request.method, "path": request.path,
                                       "route": route, "status": status,
                                       "duration_ms": duration_ms,
                                       "request_id": getattr(handler, "request_id", None)})
    metrics = handler.settings["metrics"]
    metrics.http_requests.labels(route, request.method, str(status)).inc()
    metrics.http_request_duration.labels(route, request.method).observe(request.request_time())


def cookie_secret(config):
    """XSRF_SECRET, or a random secret for this process alone."""
    if config.xsrf_secret:
        return config.xsrf_secret
    log.info("XSRF_SECRET is not set: using a random cookie secret for this process "
             "(set XSRF_SECRET when several web processes serve one site)")
    return secrets.token_hex(32)


def make_app(context):
    routes = web_routes(context)
    return tornado.web.Application(
        routes,
        openapi=openapi_document(routes, context.config),
        default_handler_class=NotFoundHandler,
        default_handler_args={"context": context},
        template_path=os.path.join(ROOT, "templates"),
        static_path=os.path.join(ROOT, "static"),
        static_handler_class=StaticHandler,
        # Browser routes refuse a POST without the _xsrf token; the program
        # routes (uploads, /sniff-mime, operator routes) override check_xsrf_cookie.
        xsrf_cookies=True,
        cookie_secret=cookie_secret(context.config),
        log_function=log_request,
        metrics=context.metrics,
        websocket_ping_interval=PING_INTERVAL,
        websocket_max_message_size=MAX_MESSAGE_SIZE,
    )
