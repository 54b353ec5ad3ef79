"""HTML for people: readable error pages, template helpers, static files.

Routes that people open in a browser answer their errors as a page in plain
words; a client whose ``Accept`` prefers JSON still gets the API's JSON error.
"""

from datetime import datetime, timezone

import tornado.web

# Headings for error pages, in the words a person uploading a photo would use.
ERROR_TITLES = {
    400: "The upload was not accepted",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    413: "That file is too large",
    415: "That file is not an image we accept",
    503: "The service is busy: try again in a few seconds",
    504: "We could not tell whether the upload was taken",
}


def wants_json(request):
    """True when the ``Accept`` header ranks application/json at least as high as
    text/html (a browser's never names JSON; ``*/*`` prefers neither)."""
    ranks = {}
    for part in request.headers.get("Accept", "").split(","):
        media, *params = [field.strip() for field in part.split(";")]
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        ranks[media] = max(ranks.get(media, 0.0), quality)
    json_rank = ranks.get("application/json", 0.0)
    return json_rank > 0 and json_rank >= ranks.get("text/html", 0.0)


def human_size(size):
    """``2480211`` -> ``"2.4 MiB"``."""
    if size < 1024:
        return "%d bytes" % size
    if size < 1024 * 1024:
        return "%s KiB" % _one_decimal(size / 1024)
    return "%s MiB" % _one_decimal(size / (1024 * 1024))


def _one_decimal(number):
    return ("%.1f" % number).removesuffix(".0")


def when(value):
    """An ISO 8601 timestamp as ``2025-11-29 14:39:05 UTC`` (a zone-less one,
    such as a camera's clock, without a zone)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class HtmlPage:
    """Mixin for handlers of browser routes (before BaseHandler in the bases):
    errors as a readable page unless JSON is asked for, and the template helpers."""

    def get_template_namespace(self):
        namespace = super().get_template_namespace()
        sizes = self.config.thumbnail_sizes
        namespace.update(human_size=human_size, when=when,
                         small_thumbnail=min(sizes), large_thumbnail=max(sizes))
        return namespace

    def write_error(self, status_code, **kwargs):
        if wants_json(self.request):
            return super().write_error(status_code, **kwargs)
        status_code, error, detail = self.error_fields(status_code, kwargs)
        self.clear_header("Content-Disposition")
        self.set_status(status_code)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.render("error.html", status=status_code, error=error, detail=detail,
                    title=ERROR_TITLES.get(status_code, "Something went wrong"))


class StaticHandler(tornado.web.StaticFileHandler):
    """static/ (the pages' one script and one style sheet), never type-sniffed."""

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
