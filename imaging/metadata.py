"""Reading an image file's container (not its pixels): where the image ends, where
its metadata lives, and how to drop that metadata without touching the pixels.

Used to refuse polyglots (a valid image with an archive, a document or markup
glued on) and, when a deployment asks for it, to strip EXIF/GPS from the stored
original: JPEG keeps its compressed scans byte for byte and gets a minimal EXIF
block holding only the orientation; PNG loses its text and eXIf chunks; WebP its
EXIF and XMP chunks; HEIF and AVIF their EXIF and XMP items, blanked in place.
Other formats are left as they are.
"""

import re
import struct
import zlib

from PIL import ExifTags, Image

# Markup a browser would run, were it ever to take the file for a page: a script,
# an HTML document, frames and plug-ins, SVG with script (an element or an event
# handler), PHP.  Not XML as such: XMP and Apple's property lists
# (``<!DOCTYPE plist ...>``) are metadata that cameras and phones write.
MARKUP = re.compile(rb"<(?:script|html|iframe|object|embed)[\s/>]|<!doctype\s+html|<\?(?:php|=)"
                    rb"|<svg\b[^>]{0,4096}[\s/]on[a-z]+\s*=", re.I)
MARKUP_REASON = "the file's metadata carries HTML or script markup"
# Archives that unpackers find by their (long) signature wherever it is.
SIGNED_ARCHIVES = re.compile(rb"Rar!\x1a\x07[\x00\x01]|7z\xbc\xaf\x27\x1c\x00[\x02-\x04]")
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_layout(data, after_scan=False):
    """``(segments, scan_start, end)``: the header segments ``(marker, start, end)``
    before the first scan (and those between and after the scans too, with
    ``after_scan``), where the first scan starts, and where EOI ends (None when
    the file stops early)."""
    segments, scan_start, pos, size = [], None, 2, len(data)
    while pos + 2 <= size:
        if data[pos] != 0xFF:
            return segments, scan_start, None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            return segments, scan_start, pos + 2
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > size:
            break
        end = pos + 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            scan_start = pos if scan_start is None else scan_start
            found = _JPEG_MARKER.search(data, end)
            if found is None:
                break
            pos = found.start()
            continue
        if scan_start is None or after_scan:
            segments.append((marker, pos, end))
        pos = end
    return segments, scan_start, None


def png_chunks(data):
    """``(chunks, end)``: ``(type, start, end)`` per chunk, and where IEND ends."""
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        chunks.append((kind, pos, end))
        if kind == b"IEND":
            return chunks, end
        pos = end
    return chunks, None


def gif_end(data, extensions=None):
    """Where the GIF trailer ends, or None; the ``(start, end)`` of each extension
    block (comments, application data ...) is added to the list ``extensions``."""
    if len(data) < 13:
        return None
    pos = 13
    if data[10] & 0x80:
        pos += 3 * (2 << (data[10] & 7))
    while pos < len(data):
        block, start = data[pos], pos
        if block == 0x3B:
            return pos + 1
        if block == 0x21:
            pos += 2
        elif block == 0x2C:
            if pos + 10 > len(data):
                return None
            flags = data[pos + 9]
            pos += 10 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0) + 1
        else:
            return None
        while pos < len(data) and data[pos]:  # data sub-blocks
            pos += data[pos] + 1
        pos += 1
        if block == 0x21 and extensions is not None:
            extensions.append((start, pos))
    return None


def riff_chunks(data):
    """``(chunks, end)`` for a WebP file: ``(fourcc, start, end)`` per chunk."""
    end = 8 + struct.unpack("<I", data[4:8])[0]
    chunks, pos = [], 12
    while pos + 8 <= min(end, len(data)):
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        chunk_end = pos + 8 + length + (length & 1)
        chunks.append((kind, pos, chunk_end))
        pos = chunk_end
    return chunks, end


def bmff_boxes(data, start=0, stop=None):
    """``(boxes, end)`` for a HEIF or AVIF file (ISO base media), or the boxes
    inside one from ``start`` to ``stop``: ``(type, start, end)`` per box, and
    where the last whole box ends."""
    boxes, pos, stop = [], start, len(data) if stop is None else stop
    while pos + 8 <= stop:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1 and pos + 16 <= stop:  # a 64-bit size follows
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:  # the last box, to the end
            size = stop - pos
        if size < header or pos + size > stop:
            break
        boxes.append((kind, pos, pos + size))
        pos += size
    return boxes, pos


def bmff_metadata_items(data):
    """``[(kind, start, end)]``: where the bytes of each EXIF (``b"Exif"``) and XMP
    (``b"xmp"``) item of a HEIF or AVIF file lie, from its ``meta`` box (item
    types from ``iinf``, places from ``iloc``, in the file or in ``idat``)."""
    top, _ = bmff_boxes(data)
    meta = next(((start, end) for kind, start, end in top if kind == b"meta"), None)
    if meta is None:
        return []
    children = {kind: (start, end) for kind, start, end in
                bmff_boxes(data, meta[0] + 12, meta[1])[0]}  # meta is a full box
    kinds = _item_kinds(data, *children.get(b"iinf", (0, 0)))
    idat = children.get(b"idat", (0, 0))[0] + 8
    return [(kinds[item], start, end)
            for item, start, end in _item_extents(data, *children.get(b"iloc", (0, 0)), idat)
            if item in kinds and 0 <= start < end <= len(data)]


def _item_kinds(data, start, end):
    """{item id: b"Exif" or b"xmp"} from an ``iinf`` box."""
    kinds = {}
    if end - start < 14:
        return kinds
    first = start + (14 if data[start + 8] == 0 else 16)  # entry count: 16 or 32 bits
    for kind, entry, entry_end in bmff_boxes(data, first, end)[0]:
        version = data[entry + 8]
        if kind != b"infe" or version < 2 or entry_end - entry < 20:
            continue
        id_size = 2 if version == 2 else 4
        item = int.from_bytes(data[entry + 12:entry + 12 + id_size], "big")
        item_type = data[entry + 14 + id_size:entry + 18 + id_size]
        names = data[entry + 18 + id_size:entry_end].split(b"\x00")  # item name, content type
        if item_type == b"Exif":
            kinds[item] = b"Exif"
        elif item_type == b"mime" and names[1:2] == [b"application/rdf+xml"]:
            kinds[item] = b"xmp"
    return kinds


def _item_extents(data, start, end, idat):
    """``[(item id, start, end)]`` per extent of an ``iloc`` box that lies in the
    file (construction method 0) or in ``idat`` (method 1)."""
    if end - start < 16:
        return []
    version = data[start + 8]
    pos = start + 12

    def number(size):
        nonlocal pos
        value = int.from_bytes(data[pos:pos + size], "big")
        pos += size
        return value

    sizes = number(2)
    offset_size, length_size = sizes >> 12, (sizes >> 8) & 15
    base_size, index_size = (sizes >> 4) & 15, sizes & 15 if version else 0
    if not length_size:  # no lengths: nothing to find (and no bytes read per extent)
        return []
    extents = []
    for _ in range(number(2 if version < 2 else 4)):
        if pos > end:
            break
        item = number(2 if version < 2 else 4)
        method = number(2) & 15 if version else 0
        number(2)  # data reference index
        base = number(base_size)
        for _ in range(number(2)):
            if pos > end:
                break
            number(index_size)
            offset, length = number(offset_size), number(length_size)
            if method in (0, 1) and length:
                at = base + offset + (idat if method == 1 else 0)
                extents.append((item, at, at + length))
    return extents


def layout(data, mime):
    """``(end, regions)``: where the image data ends (None where the container
    does not say) and the parts of the file that are not pixel data (headers,
    comments, text chunks, extension blocks), read in one pass."""
    if mime == "image/jpeg":  # the header, and any segment between or after the scans
        segments, scan_start, end = jpeg_layout(data, after_scan=True)
        return end, [data[:scan_start or 65536]] + [
            data[start:stop] for _marker, start, stop in segments
            if scan_start is not None and start > scan_start]
    if mime == "image/png":
        chunks, end = png_chunks(data)
        return end, [data[start:stop] for kind, start, stop in chunks if kind != b"IDAT"]
    if mime == "image/webp":
        chunks, end = riff_chunks(data)
        return end, [data[start:stop] for kind, start, stop in chunks
                     if kind not in (b"VP8 ", b"VP8L", b"ALPH", b"ANMF")]
    if mime == "image/gif":  # the header, and every extension block wherever it is
        extensions = []
        end = gif_end(data, extensions)
        return end, [data[:4096]] + [data[start:stop] for start, stop in extensions]
    if mime in ("image/heic", "image/heif", "image/avif"):  # every box but the coded data
        boxes, end = bmff_boxes(data)
        return end, [data[start:stop] for kind, start, stop in boxes if kind != b"mdat"]
    if mime == "image/bmp":
        return (struct.unpack("<I", data[2:6])[0] if len(data) >= 6 else None), [data[:4096]]
    return None, [data[:4096]]


def foreign_trailer(trailer):
    """What follows the image, when it holds together as a document, an archive,
    a program or markup (else None).  A lone signature is not enough: cameras and
    phones write their own trailers (maker data, Samsung's SEF blocks, padding),
    and append further pictures (multi-picture JPEGs, HDR gain maps) and
    motion-photo videos: those are photos, and stay."""
    if MARKUP.search(trailer):
        return "HTML or script"
    if _zip_entries(trailer):
        return "a ZIP archive"
    if re.search(rb"%PDF-\d\.\d", trailer[:1 << 20]) and b"%%EOF" in trailer[-1024:]:
        return "a PDF document"
    if SIGNED_ARCHIVES.search(trailer[:1 << 20]):
        return "a RAR or 7z archive"
    head = trailer.lstrip(b"\x00")
    if _elf_header(head) or _pe_header(head):
        return "a program"
    if _gzip_member(head):
        return "a gzip archive"
    return None


def _zip_entries(data):
    """True when an end-of-central-directory record (ZIP readers look for it at
    the end) points at a central directory whose first entry points at a local
    file header, as ``zipfile`` finds them, also behind a prefix."""
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
    if eocd < 0 or eocd + 22 > len(data):
        return False
    entries, cd_size, cd_offset = struct.unpack("<6xHII", data[eocd + 4:eocd + 20])
    cd_start = eocd - cd_size
    if entries == 0 or cd_start < 0 or data[cd_start:cd_start + 4] != b"PK\x01\x02" \
            or cd_start + 46 > len(data):
        return False
    if cd_offset == 0xFFFFFFFF:  # ZIP64: the central directory itself is enough
        return True
    local = cd_start - cd_offset + struct.unpack("<I", data[cd_start + 42:cd_start + 46])[0]
    return 0 <= local and data[local:local + 4] == b"PK\x03\x04"


def _elf_header(data):
    """An ELF header whose identification and sizes agree."""
    if len(data) < 64 or not data.startswith(b"\x7fELF"):
        return False
    bits, order, version = data[4], data[5], data[6]
    if bits not in (1, 2) or order not in (1, 2) or version != 1:
        return False
    endian = "<" if order == 1 else ">"
    kind, = struct.unpack(endian + "H", data[16:18])
    file_version, = struct.unpack(endian + "I", data[20:24])
    header_size, = struct.unpack(endian + "H", data[40:42] if bits == 1 else data[52:54])
    return 1 <= kind <= 4 and file_version == 1 and header_size == (52 if bits == 1 else 64)


def _pe_header(data):
    """A DOS stub whose ``e_lfanew`` points at a PE header with a known optional
    header."""
    if len(data) < 64 or not data.startswith(b"MZ"):
        return False
    pe, = struct.unpack("<I", data[60:64])
    if pe < 64 or data[pe:pe + 4] != b"PE\x00\x00":
        return False
    return data[pe + 24:pe + 26] in (b"\x0b\x01", b"\x0b\x02")  # PE32, PE32+


def _gzip_member(data):
    """A whole gzip member: header, a deflate stream that ends, CRC and length."""
    if len(data) < 18 or not data.startswith(b"\x1f\x8b\x08") or data[3] & 0xE0:
        return False
    stream = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        stream.decompress(data, 1 << 20)
    except zlib.error:
        return False
    return stream.eof or len(stream.unconsumed_tail) > 0  # ended, or a megabyte so far


def polyglot_reason(data, mime):
    """Why ``data`` is more than one image, or None."""
    end, regions = layout(data, mime)
    trailer = foreign_trailer(data[end:]) if end is not None and end < len(data) else None
    if trailer:
        return ("%d bytes of another format (%s) follow the end of the %s data"
                % (len(data) - end, trailer, mime))
    for region in regions:
        if MARKUP.search(region):
            return MARKUP_REASON
    return None


def strip_metadata(data, mime):
    """``data`` without EXIF/GPS, XMP and text metadata; pixels untouched."""
    if mime == "image/jpeg":
        return _strip_jpeg(data)
    if mime == "image/png":
        chunks, end = png_chunks(data)
        drop = {b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"}
        return data[:8] + b"".join(data[s:e] for kind, s, e in chunks if kind not in drop)
    if mime == "image/webp":
        return _strip_webp(data)
    if mime in ("image/heic", "image/heif", "image/avif"):
        return _strip_bmff(data)
    return data


def _strip_jpeg(data):
    segments, scan_start, _ = jpeg_layout(data)
    if scan_start is None:
        return data
    orientation = 1
    kept = []
    for marker, start, end in segments:
        body = data[start + 4:end]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            exif = Image.Exif()
            exif.load(body[6:])
            orientation = exif.get(ExifTags.Base.Orientation, 1)
            continue
        if marker in (0xE1, 0xED, 0xFE):  # XMP, IPTC, comments
            continue
        kept.append(data[start:end])
    if orientation != 1:  # keep the one tag the picture needs to stand upright
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        payload = b"Exif\x00\x00" + exif.tobytes()
        app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
        position = 1 if kept and kept[0][1] == 0xE0 else 0  # after JFIF's APP0
        kept.insert(position, app1)
    return data[:2] + b"".join(kept) + data[scan_start:]


# An EXIF item with no tags: the 4-byte offset of its TIFF header, then a TIFF
# header whose first directory is empty.
EMPTY_EXIF_ITEM = b"\x00\x00\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00"


def _strip_bmff(data):
    """HEIF/AVIF: each EXIF item overwritten with an empty one and each XMP item
    with spaces (XMP's own padding), in place: every offset in the file stays
    right, the coded pixels are not touched.  The picture needs no EXIF
    orientation: it is turned by the irot and imir boxes."""
    stripped = bytearray(data)
    for kind, start, end in bmff_metadata_items(data):
        filler = EMPTY_EXIF_ITEM if kind == b"Exif" and end - start >= 18 else b""
        stripped[start:end] = filler + (b" " if kind == b"xmp" else b"\x00") * (
            end - start - len(filler))
    return bytes(stripped)


def _strip_webp(data):
    chunks, end = riff_chunks(data)
    body = []
    for kind, start, chunk_end in chunks:
        if kind in (b"EXIF", b"XMP "):
            continue
        chunk = data[start:chunk_end]
        if kind == b"VP8X":  # clear the "has EXIF" and "has XMP" flags
            chunk = chunk[:8] + bytes([chunk[8] & ~0x0C]) + chunk[9:]
        body.append(chunk)
    payload = b"WEBP" + b"".join(body)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload
