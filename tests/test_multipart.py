"""The upload body's multipart parsing (handlers/upload.py): the delimiters are
searched chunk by chunk while the body arrives, and what ``parse_multipart``
then gives is exactly what one search over the whole body gives, errors
included, however the body was cut into chunks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPInputError

from handlers.upload import MAX_PARTS, Delimiters, parse_multipart
from tests.test_bad_input import BOUNDARY, CONTENT_TYPE, Part, form, uploads


def parsed(content_type, body, delimiters=None):
    """What parse_multipart makes of ``body``, as plain values (or its error)."""
    try:
        arguments, files = parse_multipart(content_type, body, {}, delimiters)
    except HTTPInputError as exc:
        return "error", str(exc)
    return ({name: [bytes(value) for value in values] for name, values in arguments.items()},
            {name: [(file.filename, file.content_type, bytes(file.body)) for file in values]
             for name, values in files.items()})


def arrived(content_type, body, sizes):
    """``body`` received in chunks of ``sizes`` (the last size repeated), searched as
    UploadBody.data_received searches it: the buffer and its Delimiters."""
    buffer, delimiters = bytearray(), Delimiters.of(content_type)
    for size in iter_sizes(sizes):
        if len(buffer) >= len(body):
            break
        buffer += body[len(buffer):len(buffer) + size]
        if delimiters is not None:
            delimiters.scan(buffer)
    return buffer, delimiters


def iter_sizes(sizes):
    yield from sizes
    while True:
        yield sizes[-1]


@settings(max_examples=1000, deadline=None, database=None)
@given(generated=uploads(), sizes=st.lists(st.integers(1, 80), min_size=1, max_size=30))
def test_a_body_searched_chunk_by_chunk_parses_as_the_whole_body(generated, sizes):
    content_type = dict(generated.headers)["Content-Type"]
    buffer, delimiters = arrived(content_type, generated.body, sizes)
    assert parsed(content_type, buffer, delimiters) == parsed(content_type,
                                                              bytearray(generated.body))


@pytest.mark.parametrize("size", [1, 2, 7, len(BOUNDARY) + 3, 64 * 1024])
def test_a_delimiter_cut_by_a_chunk_boundary_is_found(size):
    body = form(Part(b"nickname", b"alice"), Part(b"image_data", b"\x89PNG" * 50, b"a.png"))
    buffer, delimiters = arrived(CONTENT_TYPE, body, [size])
    assert len(delimiters.found) == 2
    assert parsed(CONTENT_TYPE, buffer, delimiters)[0] == {"nickname": [b"alice"]}


def test_too_many_parts_is_refused_and_an_epilogue_of_delimiters_is_not_counted():
    many = form(*[Part(b"f%d" % n, b"x") for n in range(MAX_PARTS + 1)])
    buffer, delimiters = arrived(CONTENT_TYPE, many, [100])
    assert parsed(CONTENT_TYPE, buffer, delimiters) == parsed(CONTENT_TYPE, bytearray(many)) \
        == ("error", "Invalid multipart/form-data: multipart/form-data has too many parts")
    epilogue = form(Part(b"nickname", b"alice")) + (b"--%s\r\n" % BOUNDARY.encode()) * 200
    buffer, delimiters = arrived(CONTENT_TYPE, epilogue, [100])
    assert parsed(CONTENT_TYPE, buffer, delimiters) == parsed(CONTENT_TYPE, bytearray(epilogue)) \
        == ({"nickname": [b"alice"]}, {})
