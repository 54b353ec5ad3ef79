"""Redis through redis.asyncio: one hash per image (``data``, ``mime_type``, ``etag``).

Every call is bounded by a short timeout.  A failure is logged once per outage
as a warning and answered as a miss; the client reconnects by itself on a later
call, so Redis coming back is used again without a restart.
"""

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache import Cache, CachedImage
from config import redact_url

log = logging.getLogger(__name__)


class RedisCache(Cache):
    def __init__(self, url, prefix="photo-app:", timeout=0.5, ttl=24 * 3600):
        self.url = url
        self.prefix = prefix
        self.ttl = ttl  # so a Redis without maxmemory does not grow for ever
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._healthy = True

    def describe(self):
        return "redis at %s (key prefix %r)" % (redact_url(self.url), self.prefix)

    def _key(self, key):
        return "%s%s" % (self.prefix, key)

    def _failed(self, action, exc):
        if self._healthy:
            log.warning("redis %s failed, reading from the database instead: %s", action, exc)
        self._healthy = False

    def _ok(self):
        if not self._healthy:
            log.info("redis answers again")
        self._healthy = True

    async def lookup(self, key):
        try:
            fields = await self._client.hgetall(self._key(key))
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None, "error"
        self._ok()
        if not fields or b"data" not in fields:
            return None, "miss"
        return CachedImage(fields[b"data"], fields[b"mime_type"].decode(),
                           fields[b"etag"].decode()), "hit"

    async def set(self, key, entry):
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                name = self._key(key)
                pipe.hset(name, mapping={"data": entry.data, "mime_type": entry.mime_type,
                                         "etag": entry.etag})
                pipe.expire(name, self.ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("set", exc)
            return
        self._ok()

    async def delete(self, key):
        try:
            await self._client.delete(self._key(key))
        except (RedisError, OSError) as exc:
            self._failed("delete", exc)

    async def ping(self):
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed("ping", exc)
            return False
        self._ok()
        return True

    async def clear(self):
        """Remove every key under this cache's prefix (tests use it to clean up)."""
        async for key in self._client.scan_iter(match=self.prefix + "*"):
            await self._client.delete(key)

    async def close(self):
        await self._client.aclose()
