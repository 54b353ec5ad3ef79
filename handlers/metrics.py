"""``GET /metrics``: this process's Prometheus metrics (metrics.py), in the web
role and on METRICS_PORT for the other roles (``metrics_app``)."""

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    async def get(self):
        metrics = self.context.metrics
        await metrics.refresh_queues(self.context.broker)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(metrics.exposition())


def metrics_app(context, log_function):
    """The application of METRICS_PORT: ``/metrics`` alone, on the process's IOLoop."""
    return tornado.web.Application([(r"/metrics", MetricsHandler, {"context": context})],
                                   log_function=log_function, metrics=context.metrics)
