"""E-mail against a real SMTP server (aiosmtpd's Controller on 127.0.0.1): one per
event with both parts and the thumbnail inline, a digest, and a server that is
down at first; on both databases and both brokers."""

import asyncio
import io
import json

import pytest
from PIL import Image

from storage import PENDING
from tests.helpers import FaultyStorage, eventually, make_image, post_upload, wait_for_upload
from tests.receivers import SMTPReceiver

MAIL_FROM = "photos@example.test"
MAIL_TO = ("ops@example.test", "alice@example.test")


@pytest.fixture(params=["embedded", "services"])
def stack(request):
    return request.param


@pytest.fixture
def smtp():
    receiver = SMTPReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def digest_seconds():
    return 0


@pytest.fixture
def config_overrides(smtp, digest_seconds):
    return {"smtp_url": smtp.url, "mail_from": MAIL_FROM, "mail_to": MAIL_TO,
            "mail_digest_seconds": digest_seconds}


async def upload(http_client, base_url, data, nickname):
    response = await post_upload(http_client, base_url, nickname, data)
    assert response.code == 202, response.body
    request_id = json.loads(response.body)["request_id"]
    return request_id, await wait_for_upload(http_client, base_url, request_id)


def parts(message):
    """(plain text, html, [(content id, mime type, bytes)]) of a received e-mail."""
    text = message.get_body(("plain",)).get_content()
    html_part = message.get_body(("html",))
    inline = [(part["Content-ID"].strip("<>"), part.get_content_type(), part.get_content())
              for part in message.walk() if part.get("Content-ID")]
    return text, html_part.get_content(), inline


@pytest.mark.gen_test(timeout=60)
async def test_a_stored_image_arrives_with_both_parts_and_its_thumbnail(http_client, base_url,
                                                                       context, smtp):
    smtp.start()
    nickname = "ann <b>&</b>"
    _, stored = await upload(http_client, base_url, make_image("PNG", size=(600, 400)), nickname)
    assert stored["status"] == "stored"
    [(sender, recipients, message)] = await eventually(smtp.messages)
    assert sender == MAIL_FROM and recipients == list(MAIL_TO)
    assert message["Subject"] == "Photo App: ann <b>&</b>'s photo was stored"
    assert message["To"] == ", ".join(MAIL_TO)
    text, html, inline = parts(message)
    assert nickname in text and "image %d" % stored["image_id"] in text
    assert "ann &lt;b&gt;&amp;&lt;/b&gt;" in html and nickname not in html
    [(cid, mime_type, data)] = inline
    assert mime_type == "image/jpeg" and 'src="cid:%s"' % cid in html
    thumbnail = Image.open(io.BytesIO(data))
    thumbnail.load()
    assert thumbnail.format == "JPEG" and thumbnail.size == (256, 171)


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_upload_arrives_with_the_reason_in_words(http_client, base_url,
                                                                context, smtp):
    smtp.start()
    request_id, failed = await upload(http_client, base_url, make_image("JPEG")[:300], "bob")
    assert failed["status"] == "failed"
    [(_, recipients, message)] = await eventually(smtp.messages)
    assert recipients == list(MAIL_TO)
    assert message["Subject"] == "Photo App: bob's upload failed"
    text, html, inline = parts(message)
    assert "It could not be stored: " in text and "truncated" in text and request_id in text
    assert "truncated" in html and inline == []


class TestDigest:
    @pytest.fixture
    def digest_seconds(self):
        return 0.2

    @pytest.mark.gen_test(timeout=60)
    async def test_several_uploads_arrive_as_one_email(self, http_client, base_url, context,
                                                       smtp, monkeypatch):
        smtp.start()
        # Hold the digest closed until every upload is gathered (the test's gate, not a clock).
        gate = asyncio.Event()
        storage = context.storage
        close_digest = storage.close_digest

        async def gated_close_digest(*args):
            await gate.wait()
            return await close_digest(*args)
        monkeypatch.setattr(storage, "close_digest", gated_close_digest)

        nicknames = ["carol", "dave", "erin"]
        for number, nickname in enumerate(nicknames):
            await upload(http_client, base_url, make_image(color=(number, 9, 9)), nickname)
        target = ", ".join(MAIL_TO)
        await eventually(lambda: _count_is(storage, target, 3))
        assert smtp.messages() == []
        gate.set()

        [(_, recipients, message)] = await eventually(smtp.messages)
        assert recipients == list(MAIL_TO)
        assert message["Subject"] == ("Photo App: 3 uploads from carol, dave, erin "
                                      "(3 stored, 0 failed)")
        text, html, inline = parts(message)
        assert all(nickname in text and nickname in html for nickname in nicknames)
        assert len(inline) == 3 and all(mime == "image/jpeg" for _, mime, _ in inline)
        assert await storage.count_digest_events("email", target) == 0


async def _count_is(storage, target, count):
    return await storage.count_digest_events("email", target) == count


@pytest.mark.gen_test(timeout=60)
async def test_an_smtp_server_that_is_down_gets_the_email_once_it_is_back(
        http_client, base_url, context, smtp, monkeypatch):
    # Nothing listens on the SMTP port yet.  The first failed try is held while the
    # test starts the server, so the retries cannot run out first.
    storage = context.storage
    settle = storage.settle_delivery
    first_failure, gate = asyncio.Event(), asyncio.Event()
    errors = []

    async def gated_settle(delivery_id, status, tries, error=None):
        if status == PENDING and not first_failure.is_set():
            errors.append(error)
            first_failure.set()
            await gate.wait()
        return await settle(delivery_id, status, tries, error)
    monkeypatch.setattr(storage, "settle_delivery", gated_settle)

    await upload(http_client, base_url, make_image(), "frank")
    await asyncio.wait_for(first_failure.wait(), 30)
    assert "refused" in errors[0].lower() or "connect" in errors[0].lower(), errors
    smtp.start()
    gate.set()
    [(_, recipients, message)] = await eventually(smtp.messages)
    assert recipients == list(MAIL_TO) and "frank" in message["Subject"]


@pytest.mark.gen_test(timeout=60)
async def test_a_database_fault_while_writing_the_email_is_no_try_and_holds_no_claim(
        http_client, base_url, context, smtp):
    smtp.start()
    faulty = context.storage = FaultyStorage(context.storage, "get_thumbnail", failing={1})
    try:
        request_id, _ = await upload(http_client, base_url, make_image(), "gina")
        [(_, _, message)] = await eventually(smtp.messages)
    finally:
        context.storage = faulty.inner
    assert "gina" in message["Subject"] and len(faulty.calls) == 2

    async def settled():  # the sender records the delivery once the server took the e-mail
        delivery = await context.storage.get_delivery(1)
        return delivery if delivery["status"] != PENDING else None
    delivery = await eventually(settled)
    assert (delivery["status"], delivery["tries"]) == ("delivered", 1)
    assert delivery["message_id"] == "image.uploaded:%s" % request_id
