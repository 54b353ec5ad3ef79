"""``python -m tests.gated_server ARGS``: server.py with gates a test controls, so
that uploads are held in flight by the test, not by heavy work.

``PHOTO_APP_TEST_GATES`` names a directory; in it:

- ``uploads`` holds a number N: the first N uploads of this process go on (their
  body read, nothing recorded yet), later ones wait until the number allows them;
  ``open`` lets every one through.  No file means N = 0.
- ``images``, the same for the images the processor processes (they wait in
  their image thread).
- ``events``: while this file is absent, the processor's ``image.uploaded``
  publishes wait, after the image is stored and before its message is acked.

Each wait says so on the log once: ``gate: upload held``, ``gate: image held``
and ``gate: event held for REQ``.
"""

import asyncio
import itertools
import logging
import os
import threading
import time

import imaging.process

GATES = os.environ["PHOTO_APP_TEST_GATES"]
POLL = 0.02
log = logging.getLogger("gate")
_lock = threading.Lock()


def _allowed(gate, number):
    try:
        with open(os.path.join(GATES, gate)) as f:
            budget = f.read().strip()
    except FileNotFoundError:
        return False
    return budget == "open" or number <= int(budget or 0)


def _gated_process(process):
    numbers = itertools.count(1)

    def gated_process(data, settings):
        with _lock:
            number = next(numbers)
        if not _allowed("images", number):
            log.info("gate: image held")
            while not _allowed("images", number):
                time.sleep(POLL)
        return process(data, settings)
    return gated_process


imaging.process.process = _gated_process(imaging.process.process)

from broker import IMAGE_UPLOADED  # noqa: E402 (after the patch, which the processor imports)
from consumers.processor import Processor  # noqa: E402
from storage.sql import SQLStorage  # noqa: E402
import server  # noqa: E402

_create_upload = SQLStorage.create_upload
_upload_numbers = itertools.count(1)


async def gated_create_upload(self, *args, **kwargs):
    number = next(_upload_numbers)
    if not _allowed("uploads", number):
        log.info("gate: upload held")
        while not _allowed("uploads", number):
            await asyncio.sleep(POLL)
    return await _create_upload(self, *args, **kwargs)


SQLStorage.create_upload = gated_create_upload

_publish_event = Processor.publish_event


async def gated_publish_event(self, event, request_id, **details):
    if event == IMAGE_UPLOADED and not os.path.exists(os.path.join(GATES, "events")):
        log.info("gate: event held for %s", request_id)
        while not os.path.exists(os.path.join(GATES, "events")):
            await asyncio.sleep(POLL)
    return await _publish_event(self, event, request_id, **details)


Processor.publish_event = gated_publish_event

if __name__ == "__main__":
    server.main()
