"""An in-process LRU cache bounded by the bytes it holds.

It serves alone (``REDIS_URL=memory``) or as the in-process tier in front of
Redis (cache.tiered).  A key deleted here (an image deleted: ids are never
reused) is remembered, and a later ``set`` of it is refused: a read that loaded
the bytes just before the delete cannot put them back once the delete, or its
``image.deleted`` event, has been handled.  The most recent DELETED_KEPT such
keys are remembered, far more than reads can be in flight across.
"""

from collections import OrderedDict

from cache import Cache

DELETED_KEPT = 10_000


class MemoryCache(Cache):
    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.used = 0
        self._entries = OrderedDict()
        self._deleted = OrderedDict()  # key -> None, oldest first

    def describe(self):
        return "memory (in-process, up to %d MiB)" % (self.max_bytes // (1024 * 1024))

    def peek(self, key):
        """The entry under ``key`` or None, at once (no await): the hot path."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    async def lookup(self, key):
        entry = self.peek(key)
        return entry, "miss" if entry is None else "hit"

    def deleted(self, key):
        """Whether ``key`` was deleted here (and so is never stored again)."""
        return key in self._deleted

    async def set(self, key, entry):
        if len(entry.data) > self.max_bytes or key in self._deleted:
            return
        self._drop(key)
        self._entries[key] = entry
        self.used += len(entry.data)
        while self.used > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.used -= len(evicted.data)

    async def delete(self, key):
        self._drop(key)
        self._deleted[key] = None
        self._deleted.move_to_end(key)
        if len(self._deleted) > DELETED_KEPT:
            self._deleted.popitem(last=False)

    def _drop(self, key):
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= len(entry.data)

    def clear_local(self):
        dropped = len(self._entries)
        self._entries.clear()
        self.used = 0
        return dropped

    async def ping(self):
        return True
