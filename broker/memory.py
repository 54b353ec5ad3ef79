"""The in-process broker of the zero-configuration demo.

It keeps RabbitMQ's semantics where the code depends on them: direct
exchanges routing by key to bound queues, per-consumer prefetch, manual
ack/nack with requeue and the ``redelivered`` flag, round-robin between
consumers, and ``mandatory`` publishes of unroutable messages refused.
Messages live in memory, so they do not survive the process.
"""

import asyncio
import collections
import itertools

from broker import Broker, BrokerUnavailable, Message


class _Consumer:
    def __init__(self, on_message, prefetch):
        self.on_message = on_message
        self.prefetch = prefetch
        self.unsettled = 0


class _Queue:
    def __init__(self):
        self.messages = collections.deque()
        self.consumers = []
        self.turn = itertools.count()


class MemoryBroker(Broker):
    def __init__(self, topology):
        super().__init__(topology)
        self._bindings = {}  # (exchange, routing key) -> [queue names]
        self._queues = {}
        self._open = False
        self._specs = {spec.name: spec for spec in topology.queues}
        self._subscribers = {}  # (exchange, routing key) -> [on_message]
        for spec in topology.queues:
            self._queues[spec.name] = _Queue()
            for key in spec.routing_keys:
                self._bindings.setdefault((spec.exchange, key), []).append(spec.name)

    @property
    def ready(self):
        return self._open

    def describe(self):
        return "in-process (messages live in this process only)"

    async def start(self):
        self._open = True

    def depth(self, queue):
        """Messages waiting in ``queue`` (not counting delivered, unsettled ones)."""
        return len(self._queues[queue].messages)

    async def publish(self, exchange, routing_key, body, *, message_id=None,
                      content_type=None, headers=None, mandatory=False):
        if not self._open:
            raise BrokerUnavailable("the in-process broker is closed")
        queues = self._bindings.get((exchange, routing_key), [])
        subscribers = self._subscribers.get((exchange, routing_key), [])
        if not queues and not subscribers and mandatory:
            raise BrokerUnavailable("no queue is bound to %s/%s" % (exchange, routing_key))
        loop = asyncio.get_running_loop()
        for on_message in subscribers:
            loop.call_soon(on_message, Message(bytes(body), routing_key, message_id,
                                               content_type, dict(headers or {}),
                                               settle=lambda ack, requeue: None))
        for name in queues:
            message = Message(bytes(body), routing_key, message_id, content_type,
                              dict(headers or {}))
            self._queues[name].messages.append(message)
            if self._specs[name].ttl is not None:
                asyncio.get_running_loop().call_later(
                    self._specs[name].ttl, self._expire, name, message)
            self._schedule(name)

    def _expire(self, name, message):
        """A delay queue's message has waited long enough: dead-letter it onwards."""
        queue = self._queues[name].messages
        if message not in queue or not self._open:
            return
        queue.remove(message)
        exchange, routing_key = self._specs[name].dead_letter
        for target in self._bindings.get((exchange, routing_key), []):
            self._queues[target].messages.append(Message(
                message.body, routing_key, message.message_id, message.content_type,
                message.headers))
            self._schedule(target)

    def consume(self, queue, on_message, prefetch):
        self._queues[queue].consumers.append(_Consumer(on_message, max(prefetch, 1)))
        self._schedule(queue)

    async def cancel(self, queue):
        self._queues[queue].consumers.clear()

    def subscribe(self, exchange, routing_keys, on_message):
        for key in routing_keys:
            self._subscribers.setdefault((exchange, key), []).append(on_message)

    async def close(self):
        self._open = False
        for queue in self._queues.values():
            queue.consumers.clear()

    def _schedule(self, name):
        asyncio.get_running_loop().call_soon(self._dispatch, name)

    def _dispatch(self, name):
        queue = self._queues[name]
        while queue.messages:
            free = [c for c in queue.consumers if c.unsettled < c.prefetch]
            if not free:
                return
            consumer = free[next(queue.turn) % len(free)]
            message = queue.messages.popleft()
            consumer.unsettled += 1
            message.settle = self._settler(name, consumer, message)
            consumer.on_message(message)

    def _settler(self, name, consumer, message):
        settled = False

        def settle(ack, requeue):
            nonlocal settled
            if settled:
                raise RuntimeError("message %s settled twice" % message.message_id)
            settled = True
            consumer.unsettled -= 1
            if not ack and requeue:
                self._queues[name].messages.appendleft(Message(
                    message.body, message.routing_key, message.message_id,
                    message.content_type, message.headers, redelivered=True))
            self._schedule(name)
        return settle
