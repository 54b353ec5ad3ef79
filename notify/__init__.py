"""Notifier actions that reach people: signed webhooks and e-mail.

The notifier (``consumers/notifier.py``) never talks to an endpoint while it
handles an event.  For each target of an action (each webhook URL; the mail
recipients) it records one *delivery* in the database and publishes one small
message for it to the action's queue (``notify.outbox``).  A sender
(``consumers/deliveries.py``) claims the delivery in the database with a lease,
sends it over its channel (``notify.webhook``, ``notify.email``), and on a
failure sends the message through a delay queue to try again; after the last
delay the delivery is dead-lettered in the database, where ``GET /api/failed``
lists it and can send it again.  So one slow or dead endpoint holds back
neither another endpoint nor the upload pipeline, and a delivery is sent once
per target while every sender is alive, however many run.

A channel is an object with ``action`` (its name), ``timeout`` (seconds a try
may take), ``async send(delivery)`` that returns once the target took it or
raises ``DeliveryFailed``, and ``async close()``.
"""

import base64
import binascii
import urllib.parse

ACTION_NAMES = ("log", "webhook", "email")
SECRET_PREFIX = "whsec_"
SMTP_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


class DeliveryFailed(Exception):
    """A try that did not deliver; ``final`` when trying again cannot help (410 Gone)."""

    def __init__(self, reason, final=False):
        super().__init__(reason)
        self.final = final


def enabled_actions(config):
    """NOTIFY_ACTIONS, or ``log`` plus every action whose settings are given."""
    if config.notify_actions is not None:
        return tuple(config.notify_actions)
    return ("log",) + (("webhook",) if config.webhook_urls else ()) + (
        ("email",) if config.smtp_url else ())


def targets(action, config):
    """Where an action delivers: one delivery per event and target."""
    if action == "webhook":
        return tuple(config.webhook_urls)
    if action == "email":
        return (", ".join(config.mail_to),)
    return ()


def decode_secret(secret):
    """The key bytes of a ``whsec_`` secret, or ValueError."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("it must start with %s" % SECRET_PREFIX)
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("what follows %s must be base64" % SECRET_PREFIX) from None
    if not 24 <= len(key) <= 64:
        raise ValueError("it must hold 24 to 64 bytes; it holds %d" % len(key))
    return key


def validate_notify_config(config):
    """Raise ConfigError for notifier settings that cannot work (called by Config.validate)."""
    from config import ConfigError, redact_url
    actions = enabled_actions(config)
    unknown = set(actions) - set(ACTION_NAMES)
    if unknown:
        raise ConfigError("NOTIFY_ACTIONS takes a comma list of %s; got %s"
                          % (", ".join(ACTION_NAMES), ",".join(sorted(unknown))))
    if "webhook" in actions and not config.webhook_urls:
        raise ConfigError("the webhook action needs WEBHOOK_URLS")
    for url in config.webhook_urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("WEBHOOK_URLS takes http:// or https:// URLs; got %r"
                              % redact_url(url))
    if config.webhook_urls:
        try:
            decode_secret(config.webhook_secret)
        except ValueError as exc:
            raise ConfigError("WEBHOOK_SECRET is required with WEBHOOK_URLS and must be "
                              "whsec_ + base64 of 24-64 random bytes: %s" % exc) from None
    if not config.webhook_retry_delays or any(not d > 0 for d in config.webhook_retry_delays):
        raise ConfigError("WEBHOOK_RETRY_DELAYS takes a comma list of positive seconds")
    if "email" in actions and not config.smtp_url:
        raise ConfigError("the email action needs SMTP_URL")
    if config.smtp_url:
        parts = urllib.parse.urlsplit(config.smtp_url)
        if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
            raise ConfigError("SMTP_URL must be smtp://, smtp+starttls:// or smtps://"
                              "[user:password@]host[:port]; got %r" % parts.scheme)
        if not config.mail_from or not config.mail_to:
            raise ConfigError("SMTP_URL needs MAIL_FROM and MAIL_TO (a comma list)")
    if not config.mail_digest_seconds >= 0:
        raise ConfigError("MAIL_DIGEST_SECONDS takes 0 (one e-mail per event) or more "
                          "seconds; got %r" % config.mail_digest_seconds)


def open_channel(action, context):
    """The channel that sends ``action``'s deliveries."""
    if action == "webhook":
        from notify.webhook import WebhookChannel
        return WebhookChannel(context.config)
    from notify.email import MailChannel
    return MailChannel(context)
