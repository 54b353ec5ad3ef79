"""Small things many tests need: images made on the spot, multipart bodies, polling,
images put straight into storage, and injected storage faults."""

import asyncio
import hashlib
import io
import json
import struct
import time
import uuid
import zlib

from PIL import Image

from storage import NewImage, StorageError


def make_image(fmt="PNG", size=(64, 48), color=(200, 30, 30)):
    """The bytes of a small, valid image in ``fmt``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def multipart(fields=None, files=None, boundary=None):
    """``(content_type, body)`` for fields {name: str} and files {name: (filename, bytes)}."""
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        if isinstance(value, str):
            value = value.encode()
        parts.append(b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                     % (boundary.encode(), name.encode(), value))
    for name, (filename, data) in (files or {}).items():
        parts.append(b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                     b"Content-Type: application/octet-stream\r\n\r\n%s\r\n"
                     % (boundary.encode(), name.encode(), filename.encode(), data))
    body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
    return "multipart/form-data; boundary=%s" % boundary, body


async def post_upload(http_client, base_url, nickname="alice", data=None,
                      filename="photo.png", path="/api/images", **fetch_args):
    """POST an upload; returns the response whatever its status."""
    fields = {} if nickname is None else {"nickname": nickname}
    files = {} if data is None else {"image_data": (filename, data)}
    content_type, body = multipart(fields, files)
    headers = {"Content-Type": content_type}
    headers.update(fetch_args.pop("headers", {}))
    return await http_client.fetch(base_url + path, method="POST", body=body,
                                   headers=headers, raise_error=False, **fetch_args)


async def wait_for_upload(http_client, base_url, request_id, timeout=15):
    """Poll the status route until the upload is ``stored`` or ``failed``."""
    deadline = time.monotonic() + timeout
    while True:
        response = await http_client.fetch("%s/api/uploads/%s" % (base_url, request_id),
                                           raise_error=False)
        status = json.loads(response.body) if response.code == 200 else None
        if status and status["status"] in ("stored", "failed"):
            return status
        if time.monotonic() > deadline:
            raise AssertionError("upload %s not finished after %ss: %s"
                                 % (request_id, timeout, status))
        await asyncio.sleep(0.05)


async def eventually(check, timeout=10, interval=0.05):
    """Await until ``check()`` returns something true; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        await asyncio.sleep(interval)


# -- encoding and looking at images --------------------------------------------------

def encode(image, fmt, **params):
    """The bytes of PIL ``image`` saved as ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data):
    """A fully loaded PIL image from ``data``."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def close_to(pixel, color, tolerance=40):
    """True when ``pixel``'s RGB is within ``tolerance`` of ``color`` (lossy formats)."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color))


class FaultyStorage:
    """The real storage, except that ``method`` raises StorageError(``error``) on
    the calls whose numbers (1-based) are in ``failing`` (all calls when it is None)."""

    def __init__(self, inner, method, failing=None,
                 error="the database went away (injected fault)"):
        self.inner, self.method, self.failing, self.error = inner, method, failing, error
        self.calls = []  # monotonic times of each call of ``method``

    def __getattr__(self, name):
        attribute = getattr(self.inner, name)
        if name != self.method:
            return attribute

        async def faulty(*args, **kwargs):
            self.calls.append(time.monotonic())
            if self.failing is None or len(self.calls) in self.failing:
                raise StorageError(self.error)
            return await attribute(*args, **kwargs)
        return faulty


class GatedStorage:
    """The real storage, except that ``method`` waits until ``gate`` is set."""

    def __init__(self, inner, method):
        self.inner, self.method, self.gate, self.waiting = inner, method, asyncio.Event(), 0

    def __getattr__(self, name):
        attribute = getattr(self.inner, name)
        if name != self.method:
            return attribute

        async def gated(*args, **kwargs):
            self.waiting += 1
            await self.gate.wait()
            return await attribute(*args, **kwargs)
        return gated


# -- images put straight into storage (no broker, no processor), for tests about
# reading and listing them, where many images are needed quickly ----------------

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
