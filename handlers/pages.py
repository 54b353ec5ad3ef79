"""Pages for people."""

from handlers.base import BaseHandler


class IndexHandler(BaseHandler):
    """``GET /``: the upload page."""

    def get(self):
        self.render("index.html", max_upload_bytes=self.config.max_upload_bytes)
