"""The read cache for image bytes: originals and thumbnails, keyed by image id.

Images never change once stored, so entries never go stale; they only leave
when memory is short, or when the image is deleted (``forget_image``: the
deleting process drops them, and every web process drops its own on the
``image.deleted`` event).  With Redis, each web process keeps an in-process
tier in front of it (cache.tiered), bounded by CACHE_MAX_BYTES; a process
whose event subscription was re-established after a broker reconnect may have
missed deletes, so it clears that tier (``clear_local``).  An entry keeps the
bytes as bytes beside their mime type and ETag; nothing is joined by a
separator that could occur in image data.

A cache is optional at run time: every backend turns its own failures into a
logged warning and a miss, so a read falls through to the database.
"""

from dataclasses import dataclass


def content_key(image_id):
    return "image:%s" % image_id


def thumbnail_key(image_id, size):
    return "thumbnail:%s:%s" % (image_id, size)


async def forget_image(cache, image_id, thumbnail_sizes):
    """Drop every entry of a deleted image: its original and each thumbnail."""
    for key in [content_key(image_id)] + [thumbnail_key(image_id, s) for s in thumbnail_sizes]:
        await cache.delete(key)


@dataclass(frozen=True)
class CachedImage:
    data: bytes
    mime_type: str
    etag: str


class Cache:
    """The cache contract."""

    async def get(self, key):
        """The CachedImage under ``key`` (``content_key`` or ``thumbnail_key``),
        or None on a miss or a cache fault."""
        return (await self.lookup(key))[0]

    async def lookup(self, key):
        """``(entry or None, "hit" | "miss" | "error")``: ``get`` saying which (the
        cache metrics, metrics.py)."""
        raise NotImplementedError

    async def set(self, key, entry):
        raise NotImplementedError

    async def delete(self, key):
        """Drop ``key`` for good: image ids are never reused, so a cache in this
        process's memory refuses to store the key again (a read that loaded the
        bytes just before the delete cannot put them back)."""
        raise NotImplementedError

    def clear_local(self):
        """Drop every entry held in this process's memory (events that would have
        removed some may have been missed); the number dropped.  A cache held
        elsewhere (Redis) keeps its entries."""
        return 0

    async def ping(self):
        """True when the cache answers (an absent cache always does)."""
        raise NotImplementedError

    async def close(self):
        pass

    def describe(self):
        raise NotImplementedError


class NoCache(Cache):
    """The cache turned off: every read goes to the database."""

    async def lookup(self, key):
        return None, "miss"

    async def set(self, key, entry):
        pass

    async def delete(self, key):
        pass

    async def ping(self):
        return True

    def describe(self):
        return "none (reads go to the database)"


def open_cache(config):
    if config.cache_type == "none":
        return NoCache()
    if config.cache_type == "memory":
        from cache.memory import MemoryCache
        return MemoryCache(config.cache_max_bytes)
    from cache.memory import MemoryCache
    from cache.redis import RedisCache
    from cache.tiered import TieredCache
    return TieredCache(MemoryCache(config.cache_max_bytes),
                       RedisCache(config.cache_url, prefix=config.cache_prefix,
                                  timeout=config.cache_timeout))
