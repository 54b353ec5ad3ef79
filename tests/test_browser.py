"""The pages in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven
by Playwright, against the app started as a real process on its embedded defaults.

Skipped with the reason when Chromium or Playwright is missing (failed instead
under REQUIRE_SERVICES=1).  Set BROWSER_SCREENSHOTS to a directory to keep the
screenshots the tests take (default: the test's tmp_path).
"""

import base64
import io
import os
import re

import pytest
from PIL import Image

from tests.conftest import free_port, require
from tests.processes import WEB_READY, process_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
EVIL = "<script>alert(1)</script>"
TIMEOUT = 20_000  # ms, for anything that waits on the processor


def _check_browser():
    if not os.path.exists(CHROMIUM):
        raise FileNotFoundError("%s is missing (apt-get install -y chromium)" % CHROMIUM)
    import playwright.sync_api  # noqa: F401  (pip install playwright)


@pytest.fixture(scope="module")
def browser():
    require("Chromium with Playwright", _check_browser)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def server(spawn, tmp_path):  # noqa: F811 (the imported fixture)
    """``start(**settings)``: the app as a process on a free port; returns its base URL."""
    def start(**settings):
        port = free_port()
        spawn("server", ["server.py", "--port", str(port)],
              process_env(SQLITE_DB_PATH=tmp_path / "photos.db", **settings), ready=WEB_READY)
        return "http://127.0.0.1:%d" % port
    return start


class Watched:
    """A page, with the dialogs it opened and the console errors it logged
    (a Content-Security-Policy refusal is one)."""

    def __init__(self, context):
        self.context = context
        self.dialogs, self.errors = [], []
        self.page = self.new_page()

    def new_page(self):
        page = self.context.new_page()
        page.set_default_timeout(TIMEOUT)
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("console", lambda message: message.type == "error"
                and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page


@pytest.fixture
def watched(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    watched = Watched(context)
    yield watched
    context.close()


@pytest.fixture
def screenshots(tmp_path):
    directory = os.environ.get("BROWSER_SCREENSHOTS") or str(tmp_path)
    os.makedirs(directory, exist_ok=True)
    return lambda name: os.path.join(directory, name)


def photo_file(directory, name, fmt, size, seed):
    """A photo-like file (noise, so it does not compress to nothing)."""
    noise = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    tint = Image.new("RGB", size, (seed * 70 % 256, 120, 200 - seed * 50 % 200))
    buffer = io.BytesIO()
    Image.blend(noise, tint, 0.75).save(buffer, fmt, quality=90)
    path = directory / name
    path.write_bytes(buffer.getvalue())
    return path


def expect():
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect


def test_two_photos_upload_with_progress_then_show_in_the_gallery_and_detail(
        server, watched, tmp_path, screenshots):
    base = server()
    page = watched.page
    gallery = watched.new_page()  # open before the uploads: it must update by itself
    gallery.goto(base + "/gallery")
    expect()(gallery.locator(".grid .tile")).to_have_count(0)

    page.goto(base + "/")
    first = photo_file(tmp_path, "sunset.jpg", "JPEG", (900, 700), 1)
    second = photo_file(tmp_path, "harbour.png", "PNG", (420, 300), 2)
    page.fill("#nickname", "alice")
    page.set_input_files("#image_data", [str(first), str(second)])
    expect()(page.locator(".chosen")).to_have_text("2 files chosen")
    page.click("button[type=submit]")

    items = page.locator("#uploads .upload")
    expect()(items).to_have_count(2)
    for index in range(2):
        item = items.nth(index)
        expect()(item.locator("progress")).to_have_js_property("value", 100)
        expect()(item.locator(".percent")).to_have_text("100%")
        expect()(item.locator(".badge")).to_have_text("stored", timeout=TIMEOUT)
        expect()(item.locator(".request-id code")).to_have_text(re.compile(r"^[0-9a-f]{32}$"))
        expect()(item.locator("a.view")).to_have_attribute("href", re.compile(r"^/photos/\d+$"))
    assert items.locator(".file-name").all_inner_texts() == ["sunset.jpg", "harbour.png"]
    assert page.url == base + "/"  # never left the page
    # The recent grid on the same page picks them up too.
    expect()(page.locator(".recent .tile")).to_have_count(2, timeout=TIMEOUT)
    page.wait_for_function("() => [...document.querySelectorAll('.recent img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    page.screenshot(path=screenshots("upload-page.png"), full_page=True)

    # The gallery opened before the uploads shows them without a reload.
    expect()(gallery.locator(".grid .tile")).to_have_count(2, timeout=TIMEOUT)
    expect()(gallery.locator(".grid .tile .who")).to_have_text(["alice", "alice"])
    gallery.goto(base + "/gallery")
    tiles = gallery.locator(".grid .tile")
    expect()(tiles).to_have_count(2)
    gallery.wait_for_function("() => [...document.querySelectorAll('.grid img')]"
                              ".every(img => img.complete && img.naturalWidth > 0)")
    gallery.screenshot(path=screenshots("gallery.png"), full_page=True)
    newest = int(tiles.first.get_attribute("data-id"))
    tiles.first.locator("a").click()

    gallery.wait_for_url(base + "/photos/%d" % newest)
    expect()(gallery.locator("dd.nickname")).to_have_text("alice")
    expect()(gallery.locator("dd.type")).to_have_text(re.compile(r"^image/(png|jpeg)$"))
    expect()(gallery.locator("dd.dimensions")).to_have_text(re.compile(r"^\d+ × \d+ pixels$"))
    expect()(gallery.locator("dd.size")).to_contain_text("bytes")
    expect()(gallery.locator("dd.uploaded")).to_contain_text("UTC")
    expect()(gallery.locator("a.full")).to_have_attribute("href",
                                                          "/api/images/%d/content" % newest)
    gallery.wait_for_function("() => document.querySelector('.full img').naturalWidth > 0")
    gallery.screenshot(path=screenshots("photo.png"), full_page=True)
    assert watched.dialogs == [] and watched.errors == []


def test_a_text_file_named_jpg_is_refused_next_to_it_and_a_large_one_too(
        server, watched, tmp_path):
    base = server(MAX_UPLOAD_BYTES=200_000)
    page = watched.page
    page.goto(base + "/")
    fake = tmp_path / "holiday.jpg"
    fake.write_text("these are my holiday notes, not a photo\n")
    big = photo_file(tmp_path, "huge.png", "PNG", (400, 400), 3)  # ~480 kB of noise
    assert big.stat().st_size > 200_000
    good = photo_file(tmp_path, "fine.jpg", "JPEG", (200, 150), 4)
    page.fill("#nickname", "bob")
    page.set_input_files("#image_data", [str(fake), str(big), str(good)])
    page.click("button[type=submit]")

    items = page.locator("#uploads .upload")
    expect()(items).to_have_count(3)
    refused = items.filter(has_text="holiday.jpg")
    expect()(refused.locator(".badge")).to_have_text("failed")
    expect()(refused.locator(".words")).to_have_text(re.compile(
        r"^Not an image we accept: only JPEG, PNG, .* files can be uploaded\.$"))
    large = items.filter(has_text="huge.png")
    expect()(large.locator(".badge")).to_have_text("failed")
    expect()(large.locator(".words")).to_contain_text("Too large")
    expect()(items.filter(has_text="fine.jpg").locator(".badge")).to_have_text("stored")
    assert page.url == base + "/"
    assert "{" not in page.locator("#uploads").inner_text()  # words, never raw JSON
    assert watched.dialogs == []


def test_a_nickname_with_markup_is_shown_as_text_and_runs_nothing(server, watched, tmp_path,
                                                                  screenshots):
    base = server()
    page = watched.page
    page.goto(base + "/")
    page.fill("#nickname", EVIL)
    filename = "<img src=x onerror=alert(2)>.png"
    page.set_input_files("#image_data", str(photo_file(tmp_path, filename, "PNG",
                                                       (120, 90), 5)))
    page.click("button[type=submit]")
    item = page.locator("#uploads .upload")
    expect()(item.locator(".badge")).to_have_text("stored", timeout=TIMEOUT)
    expect()(item.locator(".file-who")).to_have_text("as " + EVIL)
    expect()(item.locator(".file-name")).to_have_text(filename)
    expect()(page.locator(".recent .tile .who")).to_have_text([EVIL], timeout=TIMEOUT)

    for path in ("/gallery", "/gallery?nickname=%3Cscript%3Ealert(1)%3C%2Fscript%3E"):
        page.goto(base + path)
        expect()(page.locator(".grid .tile .who")).to_have_text([EVIL])
        assert page.locator("script").count() == 1  # only static/app.js
    page.locator(".grid .tile a").first.click()
    expect()(page.locator("dd.nickname")).to_have_text(EVIL)
    page.screenshot(path=screenshots("markup-nickname.png"), full_page=True)
    assert watched.dialogs == [], watched.dialogs
    assert page.evaluate("() => document.querySelectorAll('script:not([src])').length") == 0


def test_dropping_a_photo_uploads_it(server, watched, tmp_path):
    base = server()
    page = watched.page
    page.goto(base + "/")
    page.fill("#nickname", "dora")
    data = base64.b64encode(photo_file(tmp_path, "dropped.png", "PNG", (80, 60), 6)
                            .read_bytes()).decode()
    transfer = page.evaluate_handle("""(data) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        return transfer;
    }""", data)
    page.dispatch_event("#drop-zone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    item = page.locator("#uploads .upload")
    expect()(item.locator(".file-name")).to_have_text("dropped.png")
    expect()(item.locator(".badge")).to_have_text("stored", timeout=TIMEOUT)


def test_without_javascript_the_form_posts_and_pages_still_work(server, browser, tmp_path):
    base = server()
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT)
        page.goto(base + "/")
        page.fill("#nickname", "nojs")
        page.set_input_files("#image_data", str(photo_file(tmp_path, "plain.jpg", "JPEG",
                                                           (160, 120), 7)))
        page.click("button[type=submit]")
        expect()(page.locator("h1")).to_have_text("Upload received")
        expect()(page.locator(".message")).to_have_text(re.compile(
            r"^Request [0-9a-f]{32} received\. Image 'nojs' is being processed\.$"))
        page.click("text=Follow its status")
        # The status page refreshes itself (a meta refresh, no script) until stored.
        expect()(page.locator("h1 .status")).to_have_text("stored", timeout=TIMEOUT)
        page.click("text=See the photo")
        expect()(page.locator("dd.nickname")).to_have_text("nojs")
        page.goto(base + "/gallery?nickname=nojs")
        expect()(page.locator(".grid .tile")).to_have_count(1)
    finally:
        context.close()


def test_an_upload_is_followed_live_over_the_socket_without_polling(server, watched, tmp_path):
    base = server()
    page = watched.page
    requests, sockets = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(base + "/")
    page.fill("#nickname", "live")
    page.set_input_files("#image_data", str(photo_file(tmp_path, "live.jpg", "JPEG",
                                                       (300, 200), 3)))
    page.click("button[type=submit]")
    item = page.locator("#uploads .upload")
    expect()(item.locator(".badge")).to_have_text("stored", timeout=TIMEOUT)
    expect()(item.locator("a.view")).to_have_attribute("href", re.compile(r"^/photos/\d+$"))
    expect()(page.locator(".recent .tile")).to_have_count(1, timeout=TIMEOUT)
    assert sockets == [base.replace("http://", "ws://") + "/api/events"]
    assert not [url for url in requests if "/api/uploads/" in url], requests
    expect()(page.locator("#live-note")).to_have_count(0)
    assert watched.dialogs == [] and watched.errors == []


def test_without_the_socket_the_page_says_so_and_polls(server, watched, tmp_path):
    base = server()
    page = watched.page
    page.route_web_socket(re.compile(r".*/api/events$"), lambda socket: socket.close())
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(base + "/")
    expect()(page.locator("#live-note")).to_be_visible()
    expect()(page.locator("#live-note")).to_contain_text("checks for changes every few seconds")
    page.fill("#nickname", "polled")
    page.set_input_files("#image_data", str(photo_file(tmp_path, "polled.png", "PNG",
                                                       (120, 90), 4)))
    page.click("button[type=submit]")
    expect()(page.locator("#uploads .upload .badge")).to_have_text("stored", timeout=TIMEOUT)
    assert [url for url in requests if "/api/uploads/" in url], requests


def test_the_dashboard_moves_with_an_upload_and_sends_a_dead_letter_again(
        server, watched, tmp_path, screenshots):
    import asyncio
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from storage.sqlite import SQLiteStorage
    from tests.processes import upload

    token = "dashboard-browser-token"
    base = server(API_TOKEN=token)
    # A dead letter, recorded in the server's database as the dead-letter recorder does.
    letter_id = uuid.uuid4().hex

    async def record():
        storage = SQLiteStorage(str(tmp_path / "photos.db"))
        try:
            await storage.record_dead_letter(
                letter_id, "unlucky", "again.png", "image/png",
                photo_file(tmp_path, "again.png", "PNG", (90, 60), 8).read_bytes(), 3,
                "gave up after 3 attempts: StorageError: the database went away")
        finally:
            await storage.close()
    with ThreadPoolExecutor(1) as thread:  # Playwright's loop runs in this one
        thread.submit(asyncio.run, record()).result()

    page = watched.page
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(base + "/dashboard")
    page.wait_for_url(base + "/login?next=/dashboard")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/dashboard")
    expect()(page.locator("#dash-updated")).to_contain_text("Live · figures of")
    row = page.locator('#dead-letters tr[data-request-id="%s"]' % letter_id)
    expect()(row.locator(".who")).to_have_text("unlucky")
    expect()(page.locator("#count-accepted")).to_have_text("1")  # the dead letter's upload
    expect()(page.locator("#count-failed")).to_have_text("1")
    expect()(page.locator("#count-stored")).to_have_text("0")
    expect()(page.locator('#health li[data-backend="database"] .badge')).to_have_text("ok")

    def chart_total(series):
        return page.evaluate("(series) => [...document.querySelectorAll("
                             "'#throughput rect.bar.' + series)].reduce("
                             "(sum, bar) => sum + Number(bar.dataset.count), 0)", series)
    assert page.locator("#throughput g.minute").count() == 60
    assert (chart_total("accepted"), chart_total("stored")) == (1, 0)

    # A new upload moves the counters and the chart, from the socket's events.
    status, answer = upload(int(base.rsplit(":", 1)[1]),
                            photo_file(tmp_path, "new.jpg", "JPEG", (200, 150), 9).read_bytes(),
                            nickname=EVIL)  # shown as text, runs nothing
    assert status == 202
    expect()(page.locator("#count-stored")).to_have_text("1")
    expect()(page.locator("#count-accepted")).to_have_text("2")
    assert (chart_total("accepted"), chart_total("stored"), chart_total("failed")) == (2, 1, 1)
    expect()(page.locator("#events li").first).to_contain_text("uploaded")
    expect()(page.locator("#events li").first.locator(".who")).to_have_text(EVIL)
    page.wait_for_function("() => document.querySelectorAll('#queues tr').length > 5")

    page.screenshot(path=screenshots("dashboard-dead-letter.png"), full_page=True)

    # The dead letter, sent again with its button, ends stored.
    row.locator("button", has_text="Send again").click()
    sent = page.locator('#requeued li[data-request-id="%s"]' % letter_id)
    expect()(sent.locator(".badge")).to_have_text("stored")
    expect()(row).to_have_count(0)
    expect()(page.locator("#count-stored")).to_have_text("2")
    expect()(page.locator("#count-failed")).to_have_text("0")
    page.screenshot(path=screenshots("dashboard.png"), full_page=True)
    assert sockets == [base.replace("http://", "ws://") + "/api/events"]
    assert watched.dialogs == [] and watched.errors == [], watched.errors
