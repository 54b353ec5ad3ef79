"""Images put straight into storage (no broker, no processor), for tests about
reading and listing them, where many images are needed quickly."""

import hashlib
import struct
import uuid
import zlib

from storage import NewImage
from tests.helpers import make_image


async def store_images(storage, nickname, count=1, size=(8, 6)):
    """Store ``count`` distinct small PNGs under ``nickname``; return their ids, oldest first."""
    ids = []
    for _ in range(count):
        seed = uuid.uuid4().bytes
        data = make_image("PNG", size=size, color=tuple(seed[:3]))
        # Two images of one nickname must differ in bytes (the duplicate rule):
        # colours can repeat, so a text chunk with the seed makes them unique.
        data = data[:-12] + _png_chunk(b"tEXt", b"seed\x00" + seed.hex().encode()) + data[-12:]
        image = NewImage(nickname, "image/png", data, size[0], size[1],
                         hashlib.sha256(data).hexdigest())
        stored = await storage.store_image(uuid.uuid4().hex, image)
        ids.append(stored["id"])
    return ids


def _png_chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
