"""Image work in worker processes (imaging.workers, IMAGE_POOL=process): it runs in
another process, a worker killed mid-job breaks only that try, and shutdown ends
the workers whatever they hold.  Work is held in a worker by a gate the test
controls (tests/gated.py), never by slow work."""

import asyncio
import hashlib
import io
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest
from PIL import Image

import consumers.processor as processor_module
from consumers.processor import Processor
from imaging.process import process
from imaging.workers import ImageWorkers, MemoryFile
from tests.gated import Gate, Held
from tests.helpers import eventually
from tests.processes import WEB_READY, process_env, upload, wait_until
from tests.test_consumers import (finished, images_with_request, make_upload, publish_upload,
                                  stored_by_a_new_processor)
from tests import conftest

@pytest.fixture
def stack():
    return "embedded"  # the image work is the same on every stack


class Ran:
    """What ``where_it_ran`` returns: the pid of the process that ran it, and the data."""

    def __init__(self, data):
        self.pid = os.getpid()
        self.data = data


def where_it_ran(data):
    return Ran(data)


class Digest:
    """What ``digest_of`` returns: the SHA-256 of the bytes the worker was given."""

    def __init__(self, data):
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.data = None


def digest_of(data):
    return Digest(data)


def memory_files_open():
    """How many of this process's descriptors are image memory files."""
    return sum(os.readlink("/proc/self/fd/" + fd).startswith("/memfd:photo-app-image")
               for fd in os.listdir("/proc/self/fd") if os.path.exists("/proc/self/fd/" + fd))


def kill_this_process(data, settings):
    """What a decoder that crashes on an image does to its worker."""
    os.kill(os.getpid(), signal.SIGKILL)


def twelve_megapixels():
    """A 4000 x 3000 JPEG with EXIF orientation 6 (a phone held upright)."""
    image = Image.radial_gradient("L").resize((4000, 3000)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.gen_test(timeout=30)
async def test_the_work_runs_in_another_process_and_the_bytes_do_not_come_back():
    workers = ImageWorkers(2)
    try:
        data = b"\xff" * 1000
        ran = await workers.run(where_it_ran, data)
        assert ran.pid != os.getpid()
        assert ran.pid in workers.pids()
        assert ran.data is data  # sent back as None, the caller's own bytes put back
    finally:
        workers.close()
    assert not any(alive(pid) for pid in workers.pids())


@pytest.mark.gen_test(timeout=30)
async def test_the_bytes_go_through_a_memory_file_handed_over_off_the_ioloop(monkeypatch):
    workers = ImageWorkers(1)
    sent = []
    submit = workers._pool.submit
    monkeypatch.setattr(workers._pool, "submit", lambda fn, *args: sent.append(
        (threading.current_thread(), args)) or submit(fn, *args))
    try:
        data = os.urandom(5_000_000)
        digest = await workers.run(digest_of, data)
        assert digest.sha256 == hashlib.sha256(data).hexdigest()
        [(thread, (function, handed))] = sent
        # Submitting may start a worker, which waits on the fork server: not on the IOLoop.
        assert thread is not threading.main_thread()
        assert function is digest_of
        assert isinstance(handed, MemoryFile)  # the pid and a descriptor, not the bytes
        assert memory_files_open() == 0
    finally:
        workers.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_worker_that_cannot_read_memory_files_gets_the_bytes_through_the_pipe(
        monkeypatch, caplog):
    readable = MemoryFile.of

    def unreadable(data):  # a pid with no /proc entry: what a worker without /proc sees
        handed = readable(data)
        handed.pid = 2 ** 30
        return handed
    monkeypatch.setattr(MemoryFile, "of", staticmethod(unreadable))
    workers = ImageWorkers(1)
    try:
        data = os.urandom(100_000)
        digest = await workers.run(digest_of, data)
        assert digest.sha256 == hashlib.sha256(data).hexdigest()
        assert workers.memory_files is False
        assert "through the pipe from now on" in caplog.text
        assert memory_files_open() == 0
    finally:
        workers.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_dead_worker_takes_its_pool_with_it_and_a_new_pool_serves(tmp_path):
    gate = Gate(str(tmp_path / "images"))
    workers = ImageWorkers(2)
    try:
        held = Held(where_it_ran, gate.directory, None)
        calls = [asyncio.ensure_future(workers.run(held, b"held")) for _ in range(2)]
        await eventually(lambda: gate.entered() == 2)
        first, second = workers.pids()
        os.kill(first, signal.SIGKILL)
        for call in calls:  # the other one's work is lost with the pool: both are retried
            with pytest.raises(BrokenProcessPool):
                await call
        await eventually(lambda: not alive(second))  # not left behind, still held
        ran = await workers.run(where_it_ran, b"next")
        assert ran.pid not in (first, second, os.getpid())
    finally:
        workers.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_12_megapixel_jpeg_is_processed_in_a_worker_and_stored(context):
    assert context.config.image_pool == "process"
    upload = make_upload(twelve_megapixels(), mime_type="image/jpeg", filename="phone.jpg")
    await publish_upload(context, upload)
    status = await finished(context, upload.request_id, timeout=45)
    assert status["status"] == "stored", status
    image = await context.storage.get_image(status["image_id"])
    assert (image["width"], image["height"]) == (3000, 4000)  # stood upright
    assert image["size"] == len(upload.data)
    assert context.image_workers.pids() and os.getpid() not in context.image_workers.pids()
    data, mime_type, _sha256 = await context.storage.get_image_content(status["image_id"])
    assert (bytes(data), mime_type) == (upload.data, "image/jpeg")
    for size, shape in ((1280, (960, 1280)), (256, (192, 256))):
        _data, _mime, width, height = await context.storage.get_thumbnail(status["image_id"], size)
        assert (width, height) == shape


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [{"image_workers": 1}])
async def test_a_worker_killed_mid_job_is_replaced_and_the_upload_retried(context, monkeypatch,
                                                                          tmp_path, caplog):
    gate = Gate(str(tmp_path / "images"))
    monkeypatch.setattr(processor_module, "process", Held(process, gate.directory, None))
    upload = make_upload()
    await publish_upload(context, upload)
    await eventually(lambda: gate.entered() == 1, timeout=30)
    [worker] = context.image_workers.pids()
    os.kill(worker, signal.SIGKILL)

    # The try fails with BrokenProcessPool; the retry goes to a new worker.
    await eventually(lambda: gate.entered() == 2, timeout=30)
    assert worker not in context.image_workers.pids()
    gate.open()
    status = await finished(context, upload.request_id)
    assert status["status"] == "stored" and status["attempts"] == 2, status
    assert await images_with_request(context, upload.request_id) == 1
    assert "an image worker process died" in caplog.text
    assert "BrokenProcessPool" in caplog.text  # the reason of the retry


@pytest.mark.gen_test(timeout=60)
async def test_an_image_that_keeps_killing_workers_is_dead_lettered(context, monkeypatch):
    monkeypatch.setattr(processor_module, "process", kill_this_process)
    upload = make_upload()
    await publish_upload(context, upload)
    status = await finished(context, upload.request_id, timeout=45)
    assert status["status"] == "failed" and status["dead_lettered"], status
    assert status["attempts"] == context.config.max_attempts
    assert "BrokenProcessPool" in status["error"]
    # The workers are there again for the next upload.
    monkeypatch.setattr(processor_module, "process", process)
    fine = make_upload()
    await publish_upload(context, fine)
    assert (await finished(context, fine.request_id))["status"] == "stored"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("config_overrides", [{"roles": ("web",), "image_workers": 1}])
async def test_shutdown_gives_up_on_held_work_and_ends_its_worker(context, monkeypatch,
                                                                  tmp_path):
    gate = Gate(str(tmp_path / "images"))
    monkeypatch.setattr(processor_module, "process", Held(process, gate.directory, None))
    processor = Processor(context)
    processor.start()
    upload = make_upload()
    await publish_upload(context, upload)
    await eventually(lambda: gate.entered() == 1, timeout=30)
    [worker] = context.image_workers.pids()

    await processor.stop(0.1)  # returns although the worker is still held
    assert (await context.storage.get_upload(upload.request_id))["status"] == "processing"
    context.image_workers.close()  # as at the end of shutdown: the gate is still shut
    assert not alive(worker)

    # The message went back to its queue: the next processor, with new workers, stores it.
    context.image_workers = ImageWorkers(1)
    gate.open()
    await stored_by_a_new_processor(context, upload)


def child_pids(pid):
    """The pids of ``pid``'s children and their children (from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                children.append(int(entry))
    return children + [grandchild for child in children for grandchild in child_pids(child)]


def server_with_both_workers_held(spawn, tmp_path):
    """A server on the embedded defaults with two image workers, each holding an
    upload at the gate; the server and the gate."""
    gate = Gate(tmp_path / "images")
    port = conftest.free_port()
    server = spawn("server", gate.command("--port", str(port)),
                   process_env(SQLITE_DB_PATH=tmp_path / "photos.db", IMAGE_WORKERS=2),
                   ready=WEB_READY)
    for n in range(2):
        code, _body = upload(port, make_upload().data, nickname="held-%d" % n)
        assert code == 202
    gate.wait_entered(2)
    return server, gate


def test_the_workers_end_with_a_killed_server(spawn, tmp_path):
    """A server killed (SIGKILL) while its workers are held leaves no worker behind."""
    server, _gate = server_with_both_workers_held(spawn, tmp_path)
    workers = child_pids(server.pid)
    assert len(workers) >= 3, workers  # the fork server and two workers
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: not any(alive(pid) for pid in workers), 10,
               lambda: "processes left after the server was killed: %s"
               % [pid for pid in workers if alive(pid)])
