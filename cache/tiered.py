"""Two levels behind the one Cache contract: this process's MemoryCache in front
of a shared cache (Redis).

A read is answered from memory when it can, else from the shared cache (and
then kept in memory too); a set and a delete go to both.  Image bytes never
change under one id, so the in-process copy is as good as the shared one until
the image is deleted: the deleting process drops both, every other web process
drops its own on the ``image.deleted`` event (context.forget_deleted), and a key
deleted here is never stored here again, nor sent on to the shared cache, nor
read from it.
"""

from cache import Cache


class TieredCache(Cache):
    def __init__(self, near, far):
        self.near = near  # a MemoryCache
        self.far = far

    def describe(self):
        return "%s, behind an in-process tier of up to %d MiB" % (
            self.far.describe(), self.near.max_bytes // (1024 * 1024))

    async def lookup(self, key):
        entry = self.near.peek(key)
        if entry is not None:
            return entry, "hit"
        if self.near.deleted(key):
            return None, "miss"  # whatever Redis holds, put back by a late read elsewhere
        entry, result = await self.far.lookup(key)
        if entry is not None:
            await self.near.set(key, entry)  # refused if deleted meanwhile
        return entry, result

    async def set(self, key, entry):
        if self.near.deleted(key):
            return  # loaded before its delete: neither tier may keep it
        await self.near.set(key, entry)
        await self.far.set(key, entry)

    async def delete(self, key):
        await self.near.delete(key)
        await self.far.delete(key)

    def clear_local(self):
        return self.near.clear_local()

    async def ping(self):
        return await self.far.ping()

    async def close(self):
        await self.far.close()
