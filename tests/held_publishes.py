"""``python -m tests.held_publishes GATE_FILE [server.py arguments]``: the app, with
a gate the test controls on what it publishes to RabbitMQ.

While GATE_FILE exists, publishes (but image.processing announcements) are held
back: never sent, so never confirmed (each logged "publish held"), and the
uploads that made them stay in flight for as long as the test wants.  When the
connection drops (the test stops the node), each held publish fails as one whose
confirm never came, and the gate closes itself (GATE_FILE is removed), so the
next connection publishes as usual.  To the app that is a node dying before it
took the messages sent to it.
"""

import asyncio
import logging
import os
import sys

from broker import IMAGE_PROCESSING, BrokerUnavailable
from broker.rabbitmq import RabbitMQBroker

log = logging.getLogger("tests.held_publishes")


def install(gate):
    publish, drop = RabbitMQBroker.publish, RabbitMQBroker._drop

    async def held_publish(self, exchange, routing_key, body, **kwargs):
        # image.processing only announces that work began: what is held is what
        # finishes an upload (its message to the processor, its image.uploaded).
        # A held publish is never handed to pika, so the channel's delivery tags
        # stay those RabbitMQ counts; it waits for the connection to go.
        if os.path.exists(gate) and routing_key != IMAGE_PROCESSING:
            log.info("publish held: message %s", kwargs.get("message_id"))
            await asyncio.shield(self._lost)
            raise BrokerUnavailable("the connection closed before the broker confirmed")
        return await publish(self, exchange, routing_key, body, **kwargs)

    def dropping(self, reason):
        if os.path.exists(gate):
            os.remove(gate)
            log.info("gate closed: the connection dropped")
        drop(self, reason)

    RabbitMQBroker.publish = held_publish
    RabbitMQBroker._drop = dropping


if __name__ == "__main__":
    install(sys.argv[1])
    import server
    server.main(sys.argv[2:])
