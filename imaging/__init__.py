"""What an upload's bytes are: type sniffing and validation with Pillow.

The type is always judged from the bytes, never from the file name or the
client's content type.  ``sniff_mime`` is cheap (a look at the first bytes) and
runs on the web tier; ``inspect`` decodes the image and is CPU work for an
executor.
"""

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image

# Magic numbers of the accepted types: (offset, bytes, mime type).
SIGNATURES = [
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),  # after b"RIFF" and a length
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"BM", "image/bmp"),
]
ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
PILLOW_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                  "WEBP": "image/webp", "TIFF": "image/tiff", "BMP": "image/bmp"}
UNKNOWN = "application/octet-stream"


class InvalidImage(Exception):
    """The bytes are not an acceptable image; the message says why, in plain words."""


@dataclass
class ImageInfo:
    mime_type: str
    width: int
    height: int
    sha256: str


def sniff_mime(data):
    """The image type the bytes start with, or ``application/octet-stream``."""
    head = bytes(data[:16])
    for offset, magic, mime in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            if mime == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return mime
    return UNKNOWN


def inspect(data, accepted=ACCEPTED_TYPES, max_pixels=50_000_000):
    """Decode ``data`` fully and describe it; raise InvalidImage if it is not an
    accepted, complete image within ``max_pixels``."""
    sniffed = sniff_mime(data)
    if sniffed not in accepted:
        raise InvalidImage("not an accepted image type (%s); accepted: %s"
                           % (sniffed, ", ".join(accepted)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                mime = PILLOW_FORMATS.get(image.format)
                if mime != sniffed:
                    raise InvalidImage("the bytes start like %s but decode as %s"
                                       % (sniffed, image.format))
                width, height = image.size
                if width * height > max_pixels:
                    raise InvalidImage("image is %d x %d pixels, more than the %d allowed"
                                       % (width, height, max_pixels))
                image.load()  # a full decode: truncated or corrupt data fails here
        except InvalidImage:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise InvalidImage("image is too large to decode safely: %s" % exc) from None
        except Exception as exc:  # Pillow raises many types for bad data
            raise InvalidImage("the %s data is corrupt or truncated: %s"
                               % (sniffed, exc)) from None
    return ImageInfo(mime, width, height, hashlib.sha256(data).hexdigest())
