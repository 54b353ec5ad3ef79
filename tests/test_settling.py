"""Whatever happens to a consumer's task, its message is settled: a task cancelled
(at shutdown) while it waits in ``on_failure`` puts its message back in the queue."""

import logging
import uuid

import pytest

import consumers.base
from consumers.notifier import Notifier
from tests.helpers import eventually
from tests.test_consumers import NO_CONSUMERS, queue_counts


@pytest.mark.gen_test(timeout=40)
@pytest.mark.parametrize("config_overrides", [NO_CONSUMERS])
async def test_a_task_cancelled_while_waiting_to_requeue_requeues_its_message(
        context, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="consumers.base")
    monkeypatch.setattr(consumers.base, "RETRY_DELAY", 3600.0)  # waits until cancelled

    async def fails(event):
        raise RuntimeError("the action broke (injected)")
    notifier = Notifier(context, actions={"fails": fails})
    notifier.start()
    broker = context.broker
    message_id = "image.uploaded:" + uuid.uuid4().hex
    await broker.publish(broker.topology.events_exchange, "image.uploaded",
                         b'{"event": "image.uploaded", "request_id": "r"}',
                         message_id=message_id, mandatory=True)
    await eventually(lambda: "%s failed" % message_id in caplog.text)  # now in its sleep

    await notifier.stop(0.01)  # cancels the task that sleeps
    queue = broker.topology.notifications_queue

    async def back_in_the_queue():
        return await queue_counts(context, queue) == (1, 0)  # ready, none unsettled
    await eventually(back_in_the_queue, interval=0.1)
