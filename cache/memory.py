"""An in-process LRU cache bounded by the bytes it holds."""

from collections import OrderedDict

from cache import Cache


class MemoryCache(Cache):
    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.used = 0
        self._entries = OrderedDict()

    def describe(self):
        return "memory (in-process, up to %d MiB)" % (self.max_bytes // (1024 * 1024))

    async def lookup(self, key):
        entry = self._entries.get(key)
        if entry is None:
            return None, "miss"
        self._entries.move_to_end(key)
        return entry, "hit"

    async def set(self, key, entry):
        if len(entry.data) > self.max_bytes:
            return
        await self.delete(key)
        self._entries[key] = entry
        self.used += len(entry.data)
        while self.used > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.used -= len(evicted.data)

    async def delete(self, key):
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= len(entry.data)

    async def ping(self):
        return True
