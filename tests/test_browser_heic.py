"""An iPhone HEIC uploaded through the page in headless Chromium (which cannot show
HEIC itself): stored, upright in the gallery and on its photo page as a JPEG
rendition, the original offered for download.  Same browser set-up as
tests/test_browser.py (skipped with the reason without Chromium or Playwright)."""

import os
import re

from tests import test_browser

browser, server, watched, screenshots = (test_browser.browser, test_browser.server,
                                         test_browser.watched, test_browser.screenshots)
expect, TIMEOUT = test_browser.expect, test_browser.TIMEOUT
IPHONE = os.path.join(os.path.dirname(__file__), "corpus", "heif", "iphone_13_pro_max.heic")
NATURAL_SIZE = "(selector) => { const img = document.querySelector(selector); " \
               "return img.complete && img.naturalWidth > 0 ? [img.naturalWidth, " \
               "img.naturalHeight] : null; }"


def test_an_iphone_heic_uploaded_through_the_page_shows_upright(server, watched, screenshots):
    base = server()
    page = watched.page
    page.goto(base + "/")
    accept = page.get_attribute("#image_data", "accept").split(",")
    assert {".heic", ".heif", ".avif"} <= set(accept)
    page.fill("#nickname", "phone")
    page.set_input_files("#image_data", IPHONE)
    page.click("button[type=submit]")

    item = page.locator("#uploads .upload")
    expect()(item.locator(".badge")).to_have_text("stored", timeout=TIMEOUT)
    href = item.locator("a.view").get_attribute("href")
    image_id = int(re.fullmatch(r"/photos/(\d+)", href).group(1))

    page.goto(base + "/gallery")
    tile = page.wait_for_function(NATURAL_SIZE, arg=".grid .tile img").json_value()
    assert tile[0] < tile[1], tile  # portrait: the irot turn applied, once

    page.goto(base + href)
    assert page.wait_for_function(NATURAL_SIZE, arg=".full img").json_value() == [960, 1280]
    expect()(page.locator("dd.type")).to_have_text("image/heic")
    expect()(page.locator("dd.dimensions")).to_have_text("3024 × 4032 pixels")
    expect()(page.locator("dd.camera")).to_have_text("Apple iPhone 13 Pro Max")
    download = page.locator("a[download]")
    expect()(download).to_have_attribute("href", "/api/images/%d/content" % image_id)
    expect()(download).to_have_attribute("download", "photo-%d.heic" % image_id)
    expect()(download).to_have_text("Download the original (HEIC, 2.1 MiB)")
    with page.expect_download() as started:
        download.click()
    with open(started.value.path(), "rb") as got, open(IPHONE, "rb") as sent:
        assert got.read() == sent.read()
    page.screenshot(path=screenshots("photo-heic.png"), full_page=True)
    assert watched.dialogs == [] and watched.errors == []
