"""What an upload's bytes are, and turning them into a stored image.

The type is always judged from the bytes, never from the file name or the
client's content type.  ``sniff_mime`` is cheap (a look at the first bytes) and
runs on the web tier; ``imaging.process`` decodes the image and is CPU work for
an executor.
"""

# Magic numbers of the supported types: (offset, bytes, mime type).
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
# Pillow's format names for the supported types.
PILLOW_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                  "WEBP": "image/webp", "TIFF": "image/tiff", "BMP": "image/bmp"}
SUPPORTED_TYPES = tuple(PILLOW_FORMATS.values())
UNKNOWN = "application/octet-stream"


class InvalidImage(Exception):
    """The bytes are not an acceptable image; the message says why, in plain words."""


def sniff_mime(data):
    """The image type the bytes start with, or ``application/octet-stream``."""
    head = bytes(data[:16])
    for offset, magic, mime in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            if mime == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return mime
    return UNKNOWN
