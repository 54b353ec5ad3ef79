"""E-mail about uploads, sent with aiosmtplib on the IOLoop.

One delivery is one e-mail to every MAIL_TO address about a list of events:
one event, or all that a digest gathered (MAIL_DIGEST_SECONDS).  Each e-mail
has a plain-text part and an HTML part (the nickname escaped), a stored image's
256 px thumbnail inline (``cid:``, read from storage), and a failed upload's
reason in words.  Its Message-ID is the delivery's, the same on every try, so a
mail client can drop a copy sent twice.
"""

import html
import urllib.parse
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from broker import IMAGE_UPLOADED
from notify import SMTP_SCHEMES, DeliveryFailed

THUMBNAIL_SIZE = 256


class MailChannel:
    action = "email"

    def __init__(self, context):
        self.context = context
        config = context.config
        self.timeout = config.webhook_timeout
        self.mail_from = config.mail_from
        self.mail_to = list(config.mail_to)
        parts = urllib.parse.urlsplit(config.smtp_url)
        self.smtp = {
            "hostname": parts.hostname, "port": parts.port or SMTP_SCHEMES[parts.scheme],
            "username": urllib.parse.unquote(parts.username) if parts.username else None,
            "password": urllib.parse.unquote(parts.password) if parts.password else None,
            "use_tls": parts.scheme == "smtps", "start_tls": parts.scheme == "smtp+starttls",
            "timeout": self.timeout}
        # The stored size nearest 256 px (THUMBNAIL_SIZES may not hold 256 itself).
        self.thumbnail_size = min(config.thumbnail_sizes, key=lambda s: abs(s - THUMBNAIL_SIZE))

    async def send(self, delivery):
        message = await self.build(delivery)
        try:
            await aiosmtplib.send(message, sender=self.mail_from, recipients=self.mail_to,
                                  **self.smtp)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed("%s: %s" % (type(exc).__name__, exc)) from None

    async def close(self):
        pass  # one SMTP connection per e-mail: nothing stays open

    async def build(self, delivery):
        events = delivery["payload"]
        message = EmailMessage()
        message["Subject"] = subject(events)
        message["From"] = self.mail_from
        message["To"] = ", ".join(self.mail_to)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = "<delivery-%s.%s@photo-app>" % (
            delivery["id"], delivery["message_id"].replace(":", "-"))
        message.set_content("\n\n".join(event_text(event) for event in events) + "\n")
        thumbnails = {}  # content id -> (data, mime type)
        blocks = []
        for number, event in enumerate(events):
            cid = None
            thumbnail = None
            if event["event"] == IMAGE_UPLOADED and event.get("image_id") is not None:
                thumbnail = await self.context.storage.get_thumbnail(event["image_id"],
                                                                     self.thumbnail_size)
            if thumbnail is not None:
                cid = "thumb-%d-%s@photo-app" % (number, event["image_id"])
                thumbnails[cid] = (thumbnail[0], thumbnail[1])
            blocks.append(event_html(event, cid))
        message.add_alternative("<!doctype html><html><body>%s</body></html>\n"
                                % "\n".join(blocks), subtype="html")
        html_part = message.get_payload()[1]
        for cid, (data, mime_type) in thumbnails.items():
            maintype, subtype_ = mime_type.split("/", 1)
            html_part.add_related(data, maintype, subtype_, cid="<%s>" % cid,
                                  filename="%s.%s" % (cid.split("@")[0], subtype_))
        return message


def outcome(event):
    return "stored" if event["event"] == IMAGE_UPLOADED else "failed"


def subject(events):
    if len(events) == 1:
        event = events[0]
        if event["event"] == IMAGE_UPLOADED:
            return "Photo App: %s's photo was stored" % event["nickname"]
        return "Photo App: %s's upload failed" % event["nickname"]
    stored = sum(1 for event in events if outcome(event) == "stored")
    nicknames = ", ".join(dict.fromkeys(str(event["nickname"]) for event in events))
    return "Photo App: %d uploads from %s (%d stored, %d failed)" % (
        len(events), nicknames, stored, len(events) - stored)


def reason(event):
    words = (event.get("error") or "no reason was given").rstrip(".")
    return "It could not be stored: %s." % words


def event_text(event):
    if event["event"] == IMAGE_UPLOADED:
        return ("%s uploaded a photo (%s, %sx%s px, %s bytes); it is stored as image %s at %s."
                % (event["nickname"], event["mime_type"], event["width"], event["height"],
                   event["size"], event["image_id"], event["url"]))
    return "An upload by %s (request %s) failed. %s" % (event["nickname"],
                                                        event["request_id"], reason(event))


def event_html(event, cid):
    nickname = html.escape(str(event["nickname"]))
    if event["event"] == IMAGE_UPLOADED:
        image = ('<p><img src="cid:%s" alt="thumbnail of image %s"></p>'
                 % (cid, event["image_id"])) if cid else ""
        return ("<h2>%s uploaded a photo</h2>%s<p>%s, %sx%s px, %s bytes: image %s, "
                "<code>%s</code></p>" % (nickname, image, html.escape(str(event["mime_type"])),
                                         event["width"], event["height"], event["size"],
                                         event["image_id"], html.escape(str(event["url"]))))
    return "<h2>An upload by %s failed</h2><p>%s</p><p>Request %s.</p>" % (
        nickname, html.escape(reason(event)), html.escape(str(event["request_id"])))
