"""``python -m tests.held_publishes GATE_FILE [server.py arguments]``: the app, with
a gate the test controls on what it publishes to RabbitMQ.

While GATE_FILE exists, publishes (but image.processing announcements) are held back: never sent, so never confirmed
(each logged "publish held"), and the uploads that made them stay in flight for
as long as the test wants.  When the connection drops (the test stops the
node), the gate closes itself (GATE_FILE is removed), so the next connection
publishes as usual.  To the app that is a node dying before it took the
messages sent to it.
"""

import logging
import os
import sys

import pika.channel

from broker import IMAGE_PROCESSING
from broker.rabbitmq import RabbitMQBroker

log = logging.getLogger("tests.held_publishes")


def install(gate):
    basic_publish, drop = pika.channel.Channel.basic_publish, RabbitMQBroker._drop

    def held_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        # image.processing only announces that work began: what is held is what
        # finishes an upload (its message to the processor, its image.uploaded).
        if os.path.exists(gate) and routing_key != IMAGE_PROCESSING:
            log.info("publish held: message %s", properties and properties.message_id)
            return
        basic_publish(self, exchange, routing_key, body, properties, mandatory)

    def dropping(self, reason):
        if os.path.exists(gate):
            os.remove(gate)
            log.info("gate closed: the connection dropped")
        drop(self, reason)

    pika.channel.Channel.basic_publish = held_publish
    RabbitMQBroker._drop = dropping


if __name__ == "__main__":
    install(sys.argv[1])
    import server
    server.main(sys.argv[2:])
