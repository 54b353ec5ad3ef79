"""``GET /metrics``: this process's Prometheus metrics (metrics.py), in the web
role and on METRICS_PORT for the other roles (``metrics_app``)."""

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from handlers.base import BaseHandler
from handlers.openapi import operation


class MetricsHandler(BaseHandler):
    @operation(summary="This process's Prometheus metrics", tags=["health"], responses={
        200: {"description": "the Prometheus text exposition format",
              "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def get(self):
        metrics = self.context.metrics
        await metrics.refresh_queues(self.context.broker)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(metrics.exposition())


def metrics_app(context, log_function):
    """The application of METRICS_PORT: ``/metrics`` alone, on the process's IOLoop."""
    return tornado.web.Application([(r"/metrics", MetricsHandler, {"context": context})],
                                   log_function=log_function, metrics=context.metrics)
