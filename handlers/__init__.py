"""HTTP handlers and the one place the Tornado application is built.

Route lists are built per role: a process without the web role serves no HTTP.
"""

import os

import tornado.web

from handlers.base import NotFoundHandler
from handlers.health import HealthHandler, ReadyHandler
from handlers.images import (ImageContentHandler, ImageHandler, ThumbnailHandler,
                             UploadStatusHandler)
from handlers.pages import IndexHandler
from handlers.upload import UploadHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def web_routes(context):
    deps = {"context": context}
    return [
        (r"/", IndexHandler, deps),
        (r"/api/images", UploadHandler, deps),
        (r"/api/uploads/([0-9a-zA-Z-]{1,64})", UploadStatusHandler, deps),
        (r"/api/images/([0-9]{1,18})", ImageHandler, deps),
        (r"/api/images/([0-9]{1,18})/content", ImageContentHandler, deps),
        (r"/api/images/([0-9]{1,18})/thumbnail", ThumbnailHandler, deps),
        (r"/healthz", HealthHandler, deps),
        (r"/readyz", ReadyHandler, deps),
    ]


def make_app(context):
    return tornado.web.Application(
        web_routes(context),
        default_handler_class=NotFoundHandler,
        default_handler_args={"context": context},
        template_path=os.path.join(ROOT, "templates"),
        static_path=os.path.join(ROOT, "static"),
    )
