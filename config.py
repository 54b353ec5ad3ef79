"""Configuration: environment variables, overridden by command-line flags.

Every setting has one name in the environment (``DATABASE_URL``) and one flag
(``--database-url``).  The seed's older names (``DB_TYPE``, ``REDIS_HOST``,
``RABBITMQ_HOST`` ...) are folded into the URL forms here, so the rest of the
code only ever sees ``database_url``, ``redis_url`` and ``amqp_url``.
"""

import argparse
import logging
import math
import os
import urllib.parse
from dataclasses import dataclass, field

from imaging import SUPPORTED_TYPES
from logs import FORMATS as LOG_FORMATS

ROLES = ("web", "processor", "notifier")
IMAGE_POOLS = ("process", "thread")
HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024


class ConfigError(Exception):
    """A configuration that cannot work; the message says what to change."""


@dataclass
class Config:
    roles: tuple = ROLES
    port: int = 5000
    address: str = ""
    # The port of /metrics in a process without the web role (which serves it on
    # PORT); 0, the default, serves none.
    metrics_port: int = 0
    # "sqlite:///path" or "postgresql://user:password@host:port/dbname"
    database_url: str = ""
    # "memory" (the in-process broker) or "amqp://user:password@host:port/vhost",
    # or several such URLs, comma-separated: the nodes of one RabbitMQ cluster
    amqp_url: str = "memory"
    # The SQLite file of the in-process broker's queues; "" means the SQLite
    # database itself, or data/broker.db when the database is PostgreSQL.
    broker_db_path: str = ""
    # "classic" or "quorum" (replicated across a cluster's nodes)
    amqp_queue_type: str = "classic"
    # "memory", "none" or "redis://host:port/db"
    cache_url: str = "memory"
    # Prefixes keep several deployments (or test runs) apart on shared services.
    amqp_prefix: str = ""
    cache_prefix: str = "photo-app:"
    max_upload_bytes: int = 16 * MIB
    # Upload bodies (their Content-Length) received at once, per web process;
    # past it an upload is answered 503 before its body is read.
    max_inflight_upload_bytes: int = 256 * MIB
    prefetch: int = 4
    confirm_timeout: float = 10.0
    shutdown_timeout: float = 15.0
    # Seconds a request's whole body may take to arrive (Tornado's body_timeout:
    # a deadline for the body, not an idle timeout); then the connection is closed,
    # so a client that promises more bytes than it sends cannot hold it forever.
    body_timeout: float = 300.0
    # Image bytes one process keeps in its memory: the whole cache with REDIS_URL=memory,
    # the in-process tier in front of Redis otherwise.
    cache_max_bytes: int = 64 * MIB
    cache_timeout: float = 0.5
    db_pool_size: int = 8
    image_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Where image work runs: "process" (worker processes, so Pillow never holds
    # this process's interpreter lock) or "thread" (threads of this process).
    image_pool: str = "process"
    max_image_pixels: int = 50_000_000
    max_image_side: int = 30_000
    accepted_types: tuple = SUPPORTED_TYPES
    thumbnail_sizes: tuple = (256, 1280)
    thumbnail_format: str = "jpeg"
    thumbnail_quality: int = 85
    strip_metadata: bool = False
    # Waits (seconds) between attempts at an upload that failed for a passing
    # reason; after max_attempts it is dead-lettered.
    retry_delays: tuple = (2, 10, 60, 300)
    max_attempts: int = 5
    # Failed deliveries of one message (for a reason other than an outage) after
    # which a consumer parks it instead of taking it again (consumers/base.py).
    max_deliveries: int = 10
    api_token: str = ""
    xsrf_secret: str = ""
    # Behind a reverse proxy: take the client's address and scheme from its
    # X-Forwarded-For / X-Real-Ip and X-Forwarded-Proto / X-Scheme headers.
    trust_proxy_headers: bool = False
    log_level: str = "INFO"
    # "text" (the human format) or "json" (one object per line; logs.py)
    log_format: str = "text"
    # Origins besides the page's own host that may open /api/events (scheme://host[:port]).
    allowed_origins: tuple = ()
    # Notifier actions (notify/): which run, and where webhooks and e-mail go.
    notify_actions: tuple = None  # None: log plus every action configured below
    webhook_urls: tuple = ()
    webhook_secret: str = ""
    webhook_timeout: float = 15.0
    # Waits (seconds) before each new try of a webhook or e-mail delivery; after
    # the last one the delivery is dead-lettered.
    webhook_retry_delays: tuple = (5, 300, 1800, 7200, 18000, 36000)
    webhook_allow_private: bool = False
    smtp_url: str = ""
    mail_from: str = ""
    mail_to: tuple = ()
    mail_digest_seconds: float = 0.0

    @property
    def db_type(self):
        return "postgres" if self.database_url.startswith("postgres") else "sqlite"

    @property
    def broker_type(self):
        return "memory" if self.amqp_url == "memory" else "rabbitmq"

    @property
    def sqlite_path(self):
        """The file of a ``sqlite:///`` database (``:memory:`` if the URL names none)."""
        return self.database_url[len("sqlite:///"):] or ":memory:"

    @property
    def embedded_broker_path(self):
        """Where the in-process broker keeps its queues."""
        if self.broker_db_path:
            return self.broker_db_path
        if self.db_type == "sqlite":
            return self.sqlite_path
        return os.path.join(HERE, "data", "broker.db")

    @property
    def amqp_urls(self):
        """The broker's node URLs, in the order they are tried."""
        return [url.strip() for url in self.amqp_url.split(",") if url.strip()]

    @property
    def cache_type(self):
        return self.cache_url.split(":", 1)[0]

    def validate(self):
        for attr, (low, high) in BOUNDS.items():
            value = getattr(self, attr)
            if not low <= value <= high or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError("%s must be %s; got %r" % (_names(attr), _describe(attr), value))
        if logging.getLevelName(self.log_level.upper()) not in range(0, 101):
            raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL; got %r"
                              % self.log_level)
        for name, url in (("DATABASE_URL", self.database_url), ("AMQP_URL", self.amqp_url),
                          ("REDIS_URL", self.cache_url)):
            _check_url(name, url)
        unknown = set(self.roles) - set(ROLES)
        if unknown or not self.roles:
            raise ConfigError(
                "--role takes all, web, processor, notifier or a comma list of them; "
                "got %s" % ",".join(sorted(unknown) or ["nothing"]))
        if self.broker_type == "memory" and set(self.roles) != set(ROLES):
            raise ConfigError(
                "role %s needs a real RabbitMQ: the in-process broker only connects "
                "roles inside one process. Set AMQP_URL (or RABBITMQ_HOST), or run "
                "--role=all." % ",".join(self.roles))
        if self.broker_type == "rabbitmq" and (not self.amqp_urls or any(
                url.split(":", 1)[0] not in ("amqp", "amqps") for url in self.amqp_urls)):
            raise ConfigError("AMQP_URL must be 'memory' or amqp://... (several nodes of one "
                              "cluster: comma-separated)")
        if self.amqp_queue_type not in ("classic", "quorum"):
            raise ConfigError("AMQP_QUEUE_TYPE must be classic or quorum; got %r"
                              % self.amqp_queue_type)
        if self.cache_type not in ("memory", "none", "redis", "rediss"):
            raise ConfigError("REDIS_URL must be redis://..., 'memory' or 'none'; got %r"
                              % redact_url(self.cache_url))
        unknown = set(self.accepted_types) - set(SUPPORTED_TYPES)
        if unknown or not self.accepted_types:
            raise ConfigError("ACCEPTED_TYPES takes a comma list of %s; got %s"
                              % (", ".join(SUPPORTED_TYPES), ",".join(self.accepted_types)))
        if self.image_pool not in IMAGE_POOLS:
            raise ConfigError("IMAGE_POOL must be %s; got %r"
                              % (" or ".join(IMAGE_POOLS), self.image_pool))
        if self.thumbnail_format not in ("jpeg", "webp"):
            raise ConfigError("THUMBNAIL_FORMAT must be jpeg or webp; got %r"
                              % self.thumbnail_format)
        if not self.thumbnail_sizes or min(self.thumbnail_sizes) < 16:
            raise ConfigError("THUMBNAIL_SIZES takes a comma list of sizes of 16 px or more")
        if not self.retry_delays or min(self.retry_delays) <= 0 or self.max_attempts < 1:
            raise ConfigError("RETRY_DELAYS takes positive seconds and MAX_ATTEMPTS at least 1")
        if not self.body_timeout > 0:
            raise ConfigError("BODY_TIMEOUT takes a positive number of seconds; got %r"
                              % self.body_timeout)
        if self.log_format not in LOG_FORMATS:
            raise ConfigError("LOG_FORMAT must be %s; got %r"
                              % (" or ".join(LOG_FORMATS), self.log_format))
        if self.database_url.split(":", 1)[0] not in ("sqlite", "postgres", "postgresql"):
            raise ConfigError("DATABASE_URL must be sqlite:///path or postgresql://...; got %r"
                              % redact_url(self.database_url))
        from notify import validate_notify_config
        validate_notify_config(self)
        return self


# Ranges of the numeric settings, checked by Config.validate: (lowest, highest).
_DAY = 24 * 3600.0
_MAX_INT = 2 ** 63 - 1
BOUNDS = {
    "port": (0, 65535),                  # 0: any free port
    "metrics_port": (0, 65535),          # 0: not served
    "prefetch": (1, 65535),              # AMQP's prefetch count is 16 bits; 0 would mean unlimited
    "confirm_timeout": (0.001, _DAY), "shutdown_timeout": (0.001, _DAY),
    "body_timeout": (0.001, _DAY), "cache_timeout": (0.001, _DAY),
    "max_upload_bytes": (1, _MAX_INT), "cache_max_bytes": (1, _MAX_INT),
    "db_pool_size": (1, 1000), "image_workers": (1, 1000),
    "max_image_pixels": (1, _MAX_INT), "max_image_side": (1, _MAX_INT),
    "thumbnail_quality": (1, 100),
    "max_attempts": (1, 1000), "max_deliveries": (1, 1000),
    "webhook_timeout": (0.001, _DAY),
}


def _names(attr):
    """How a user spells the setting ``attr``: its variable and its flag."""
    for flag, name, each, _kind, _help in _SETTINGS:
        if each == attr:
            return "%s (%s)" % (name, flag) if name else flag
    return attr


def _describe(attr):
    low, high = BOUNDS[attr]
    if isinstance(low, float):
        return "a number of seconds above 0" + ("" if high == _DAY else " and at most %g" % high)
    return "a whole number from %d" % low + ("" if high == _MAX_INT else " to %d" % high)


def redact_url(url):
    """``url`` with any password replaced by ``***`` (in the user part and in a
    ``password=`` query field); a comma list of URLs is redacted URL by URL.
    Every URL that is logged or shown goes through here."""
    if "," in url:
        return ",".join(redact_url(each) for each in url.split(","))
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<an unreadable URL>"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if password is None and not any(k.lower() == "password" for k, _ in query):
        return url
    if password is not None:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc="%s:***@%s" % (user.split(":", 1)[0], host))
    query = [(k, "***" if k.lower() == "password" else v) for k, v in query]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="*")))


def _check_url(name, url):
    """A URL's port must be a number from 0 to 65535, and a Redis URL's path a database number."""
    for each in url.split(","):
        try:
            parts = urllib.parse.urlsplit(each)
            parts.port
        except ValueError:
            raise ConfigError("%s has a port that is not a number from 0 to 65535: %r"
                              % (name, redact_url(each))) from None
        if parts.scheme in ("redis", "rediss") and not parts.path.strip("/").isdigit() \
                and parts.path.strip("/"):
            raise ConfigError("%s must end with a database number (redis://host:port/0); got %r"
                              % (name, redact_url(each)))


def _database_url(env):
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    db_type = env.get("DB_TYPE", "sqlite").lower()
    if db_type in ("postgres", "postgresql"):
        user = env.get("PGUSER", "postgres")
        password = env.get("PGPASSWORD", "")
        auth = urllib.parse.quote(user, safe="")
        if password:
            auth += ":" + urllib.parse.quote(password, safe="")
        return "postgresql://%s@%s:%s/%s" % (
            auth, env.get("PGHOST", "127.0.0.1"), env.get("PGPORT", "5432"),
            env.get("PGDATABASE", "photo_app"))
    if db_type != "sqlite":
        raise ConfigError("DB_TYPE must be sqlite or postgres; got %r" % db_type)
    path = env.get("SQLITE_DB_PATH") or os.path.join(HERE, "data", "photo-app.db")
    return "sqlite:///" + os.path.abspath(path)


def _amqp_url(env):
    if env.get("AMQP_URL"):
        return env["AMQP_URL"]
    if env.get("RABBITMQ_HOST"):
        return "amqp://%s:%s@%s:%s/%%2F" % (
            env.get("RABBITMQ_USER", "guest"), env.get("RABBITMQ_PASSWORD", "guest"),
            env["RABBITMQ_HOST"], env.get("RABBITMQ_PORT", "5672"))
    return "memory"


def _cache_url(env):
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    if env.get("REDIS_HOST"):
        return "redis://%s:%s/%s" % (env["REDIS_HOST"], env.get("REDIS_PORT", "6379"),
                                     env.get("REDIS_DB", "0"))
    return "memory"


def _words(value):
    return tuple(word.strip().lower() for word in value.split(",") if word.strip())


def _sizes(value):
    return tuple(sorted({int(word) for word in _words(value)}))


def _delays(value):
    return tuple(float(word) for word in _words(value))


def _origins(value):
    return tuple(word.rstrip("/") for word in _words(value))


def _list(value):
    """A comma list, case kept (URLs, addresses)."""
    return tuple(word.strip() for word in value.split(",") if word.strip())


def _flag(value):
    word = value.strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("not true or false")
    return word in ("1", "true", "yes", "on")


# (flag, environment variable, Config field, type, help)
_SETTINGS = [
    ("--port", "PORT", "port", int, "HTTP port (web role)"),
    ("--metrics-port", "METRICS_PORT", "metrics_port", int,
     "port of /metrics for a process without the web role (default 0: none)"),
    ("--address", "ADDRESS", "address", str, "HTTP listen address (default: all)"),
    ("--database-url", None, "database_url", str,
     "sqlite:///path or postgresql://... (env DATABASE_URL, or DB_TYPE/SQLITE_DB_PATH/PG*)"),
    ("--amqp-url", None, "amqp_url", str,
     "amqp://... (a comma list for a cluster's nodes) or 'memory' "
     "(env AMQP_URL, or RABBITMQ_HOST/RABBITMQ_PORT)"),
    ("--redis-url", None, "cache_url", str,
     "redis://host:port/db, 'memory' or 'none' (env REDIS_URL, or REDIS_HOST/PORT/DB)"),
    ("--broker-db-path", "BROKER_DB_PATH", "broker_db_path", str,
     "SQLite file of the in-process broker's queues (default: the SQLite database, "
     "or data/broker.db with PostgreSQL)"),
    ("--amqp-prefix", "AMQP_PREFIX", "amqp_prefix", str, "prefix for exchange and queue names"),
    ("--amqp-queue-type", "AMQP_QUEUE_TYPE", "amqp_queue_type", str,
     "classic or quorum (replicated; for a RabbitMQ cluster)"),
    ("--cache-prefix", "CACHE_PREFIX", "cache_prefix", str, "prefix for cache keys"),
    ("--max-upload-bytes", "MAX_UPLOAD_BYTES", "max_upload_bytes", int,
     "largest accepted image file"),
    ("--max-inflight-upload-bytes", "MAX_INFLIGHT_UPLOAD_BYTES", "max_inflight_upload_bytes",
     int, "upload bodies received at once (web role); past it, 503"),
    ("--prefetch", "PREFETCH", "prefetch", int, "unacked messages per consumer"),
    ("--confirm-timeout", "CONFIRM_TIMEOUT", "confirm_timeout", float,
     "seconds to wait for the broker's publish confirm"),
    ("--shutdown-timeout", "SHUTDOWN_TIMEOUT", "shutdown_timeout", float,
     "seconds in-flight messages get to finish at shutdown"),
    ("--body-timeout", "BODY_TIMEOUT", "body_timeout", float,
     "seconds a request body may take to arrive in full (web role)"),
    ("--cache-max-bytes", "CACHE_MAX_BYTES", "cache_max_bytes", int,
     "image bytes one process keeps in memory: the in-memory cache, or the "
     "in-process tier in front of Redis"),
    ("--cache-timeout", "CACHE_TIMEOUT", "cache_timeout", float,
     "seconds before a Redis call is given up"),
    ("--db-pool-size", "DB_POOL_SIZE", "db_pool_size", int, "database connections"),
    ("--image-workers", "IMAGE_WORKERS", "image_workers", int,
     "processes (or threads) for image work"),
    ("--image-pool", "IMAGE_POOL", "image_pool", str,
     "where image work runs: process (worker processes) or thread"),
    ("--max-image-pixels", "MAX_IMAGE_PIXELS", "max_image_pixels", int,
     "largest accepted width x height"),
    ("--max-image-side", "MAX_IMAGE_SIDE", "max_image_side", int,
     "largest accepted width or height"),
    ("--accepted-types", "ACCEPTED_TYPES", "accepted_types", _words,
     "comma list of accepted mime types"),
    ("--thumbnail-sizes", "THUMBNAIL_SIZES", "thumbnail_sizes", _sizes,
     "comma list of thumbnail sizes (longest side, px)"),
    ("--thumbnail-format", "THUMBNAIL_FORMAT", "thumbnail_format", str, "jpeg or webp"),
    ("--thumbnail-quality", "THUMBNAIL_QUALITY", "thumbnail_quality", int,
     "thumbnail encoder quality, 1-100"),
    ("--strip-metadata", "STRIP_METADATA", "strip_metadata", _flag,
     "remove EXIF/GPS and text metadata from stored originals (true/false)"),
    ("--retry-delays", "RETRY_DELAYS", "retry_delays", _delays,
     "comma list of waits (s) between attempts after a passing failure"),
    ("--max-attempts", "MAX_ATTEMPTS", "max_attempts", int,
     "attempts at an upload before it is dead-lettered"),
    ("--max-deliveries", "MAX_DELIVERIES", "max_deliveries", int,
     "failed deliveries of a message before a consumer parks it"),
    ("--api-token", "API_TOKEN", "api_token", str,
     "bearer token for the operator routes (dead letters)"),
    ("--xsrf-secret", "XSRF_SECRET", "xsrf_secret", str, "cookie secret for page forms"),
    ("--trust-proxy-headers", "TRUST_PROXY_HEADERS", "trust_proxy_headers", _flag,
     "take the client's address and scheme from a reverse proxy's X-Forwarded-* headers"),
    ("--log-format", "LOG_FORMAT", "log_format", str,
     "text (default) or json: one JSON object per log line"),
    ("--allowed-origins", "ALLOWED_ORIGINS", "allowed_origins", _origins,
     "comma list of origins besides the page's own that may open /api/events"),
    ("--notify-actions", "NOTIFY_ACTIONS", "notify_actions", _words,
     "comma list of log, webhook, email (default: log plus every one configured)"),
    ("--webhook-urls", "WEBHOOK_URLS", "webhook_urls", _list,
     "comma list of URLs each event is POSTed to (Standard Webhooks)"),
    ("--webhook-secret", "WEBHOOK_SECRET", "webhook_secret", str,
     "whsec_ + base64 of 24-64 random bytes; signs every webhook"),
    ("--webhook-timeout", "WEBHOOK_TIMEOUT", "webhook_timeout", float,
     "seconds an endpoint (or the SMTP server) gets to answer"),
    ("--webhook-retry-delays", "WEBHOOK_RETRY_DELAYS", "webhook_retry_delays", _delays,
     "comma list of waits (s) before each retry of a webhook or e-mail"),
    ("--webhook-allow-private", "WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", _flag,
     "allow webhook URLs on loopback, private and link-local addresses (true/false)"),
    ("--smtp-url", "SMTP_URL", "smtp_url", str,
     "smtp://, smtp+starttls:// or smtps://user:password@host:port"),
    ("--mail-from", "MAIL_FROM", "mail_from", str, "sender address of notification e-mail"),
    ("--mail-to", "MAIL_TO", "mail_to", _list, "comma list of recipients"),
    ("--mail-digest-seconds", "MAIL_DIGEST_SECONDS", "mail_digest_seconds", float,
     "gather events into one e-mail per this many seconds (0: one per event)"),
]


# Environment variables read besides those of _SETTINGS: the URL forms, the seed's
# names folded into them, and what server.py reads itself.
OTHER_NAMES = ("DATABASE_URL", "DB_TYPE", "SQLITE_DB_PATH", "PGHOST", "PGPORT", "PGUSER",
               "PGPASSWORD", "PGDATABASE", "AMQP_URL", "RABBITMQ_HOST", "RABBITMQ_PORT",
               "RABBITMQ_USER", "RABBITMQ_PASSWORD", "REDIS_URL", "REDIS_HOST", "REDIS_PORT",
               "REDIS_DB", "CACHE", "ROLE", "LOG_LEVEL")


class _Parser(argparse.ArgumentParser):
    """Bad flags end as a ConfigError (one line, exit 2), like bad variables."""

    def error(self, message):
        raise ConfigError(message)


_KINDS = {int: "a whole number", float: "a number", _words: "a comma list",
          _sizes: "a comma list of whole numbers", _delays: "a comma list of numbers",
          _flag: "true or false"}


def _convert(flag, name, kind, value):
    try:
        return kind(value)
    except ValueError:
        raise ConfigError("%s must be %s; got %r" % ("%s (%s)" % (name, flag) if name else flag,
                                                     _KINDS.get(kind, "text"), value)) from None


def environment_names():
    """Every environment variable the app reads its configuration from."""
    return set(OTHER_NAMES) | {name for _flag, name, _attr, _kind, _help in _SETTINGS if name}


def load_config(argv=None, environ=None):
    """Build the configuration from ``environ`` (default os.environ), then ``argv``."""
    env = dict(os.environ if environ is None else environ)
    config = Config()
    config.database_url = _database_url(env)
    config.amqp_url = _amqp_url(env)
    config.cache_url = _cache_url(env)
    if env.get("CACHE") in ("memory", "none"):
        config.cache_url = env["CACHE"]
    config.log_level = env.get("LOG_LEVEL") or config.log_level
    for flag, name, attr, kind, _help in _SETTINGS:
        if name and env.get(name):
            setattr(config, attr, _convert(flag, name, kind, env[name]))

    parser = _Parser(description="Photo App: upload and serve photos.")
    parser.add_argument("--role", default=env.get("ROLE", "all"),
                        help="all (default), web, processor, notifier, or a comma list")
    for flag, _name, attr, _kind, text in _SETTINGS:
        parser.add_argument(flag, dest=attr, default=None, help=text)
    args = parser.parse_args(argv)
    for flag, name, attr, kind, _help in _SETTINGS:
        value = getattr(args, attr)
        if value is not None:
            setattr(config, attr, _convert(flag, name, kind, value))
    roles = [r.strip() for r in args.role.split(",") if r.strip()]
    config.roles = ROLES if roles == ["all"] else tuple(dict.fromkeys(roles))
    return config.validate()
