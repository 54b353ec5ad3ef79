"""RabbitMQ through pika's ``TornadoConnection``: the only module that speaks pika.

One connection per process, created on the running IOLoop, with

* a publishing channel in confirm mode: every publish waits for the broker's
  ack; a nack, a ``mandatory`` return, a closed connection, a blocked
  connection (memory or disk alarm) or a timeout raises ``BrokerUnavailable``;
* one channel per consumer, with its own prefetch.

Given several URLs (the nodes of one cluster), the process connects to the
first that answers and, when its node goes away, to the next one, round the
list.  When the connection drops, the next node is tried at once; once every
node has failed in a row, a reconnect is scheduled on the loop with a growing
delay (1 s doubling to 30 s).  On each new connection the topology is declared
again and every consumer resumes.  Publishes still waiting for a confirm when
a connection drops fail with ``BrokerUnavailable``: the node may have died
before the message was safe.  The loop itself is never stopped and nothing
sleeps on it.
"""

import asyncio
import logging
import time

import pika
from pika.adapters.tornado_connection import TornadoConnection
from pika.adapters.utils import io_services_utils
from tornado.ioloop import IOLoop

from broker import Broker, BrokerUnavailable, Message
from config import redact_url

log = logging.getLogger(__name__)

MIN_DELAY, MAX_DELAY = 1.0, 30.0
# pika reads its socket 4 KB at a time and appends each read to its frame buffer, a new
# bytes object each time until a frame (up to 128 KB) is whole: a 4 MB upload cost over
# a thousand reads and loop turns, and about 70 MB of copying, on the IOLoop.  Each read
# takes up to a whole frame instead (it halved the processor's IOLoop CPU per upload).
io_services_utils._AsyncTransportBase._MAX_RECV_BYTES = 128 * 1024
NACKED_FOR = 5.0  # seconds of nothing but nacks before the connection is started afresh


class _Callback:
    """Turns one pika callback into an awaitable; fails if the connection drops first."""

    def __init__(self, broker):
        self.future = asyncio.get_running_loop().create_future()
        broker._waiters.add(self.future)
        self.future.add_done_callback(broker._waiters.discard)

    def __call__(self, *args):
        if not self.future.done():
            self.future.set_result(args[-1] if args else None)


def _expire(future, timeout):
    if not future.done():
        future.set_exception(BrokerUnavailable("no confirm from rabbitmq within %.1f s"
                                               % timeout))


class RabbitMQBroker(Broker):
    def __init__(self, topology, urls, confirm_timeout=10.0, metrics=None):
        """``urls``: one AMQP URL, or a list of the URLs of one cluster's nodes."""
        super().__init__(topology, metrics)
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self._node = 0                # index in urls of the node (to be) connected
        self.confirm_timeout = confirm_timeout
        self._connection = None
        self._channel = None          # the publishing channel, once confirms are on
        self._blocked = False
        self._closing = False
        self._lost = None             # resolves when the current connection closes
        self._runner = None
        self._waiters = set()         # futures to fail when the connection drops
        self._pending = {}            # delivery tag -> (future, message id)
        self._returned = set()        # message ids returned as unroutable
        self._next_tag = 0
        self._nacked_since = None     # loop time of the first of the nacks in a row
        self._consumers = {}          # queue -> (on_message, prefetch)
        self._consumer_channels = {}  # queue -> (channel, consumer tag)
        self._subscriptions = []      # (exchange, routing keys, on_message, on_subscribed)
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()  # set by close(): cuts a reconnect delay short

    @property
    def ready(self):
        return self._channel is not None and self._channel.is_open and not self._blocked

    def describe(self):
        prefix = self.topology.prefix
        return "rabbitmq at %s%s%s" % (
            ", ".join(redact_url(url) for url in self.urls),
            " (name prefix %r)" % prefix if prefix else "",
            ", %s queues" % self.topology.queue_type if self.topology.queue_type != "classic"
            else "")

    async def start(self):
        self._runner = asyncio.ensure_future(self._run())

    # -- connection lifecycle ------------------------------------------------

    async def _run(self):
        delay = MIN_DELAY
        failed = 0  # nodes that failed in a row
        while not self._closing:
            url = redact_url(self.urls[self._node])
            try:
                await self._connect(self.urls[self._node])
                delay, failed = MIN_DELAY, 0
                log.info("rabbitmq connected to %s, topology declared", url)
                self.connected.set()
                await self._lost
            except Exception as exc:  # any failure leads to the same reconnect
                if not self._closing:
                    log.warning("rabbitmq unavailable at %s: %s", url,
                                exc or type(exc).__name__)
            self.connected.clear()
            self._drop("rabbitmq connection lost")
            if self._closing:
                break
            self._node = (self._node + 1) % len(self.urls)
            failed += 1
            if failed < len(self.urls):
                continue  # another node may answer: try it at once
            failed = 0
            log.info("rabbitmq: reconnecting in %.0f s", delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, MAX_DELAY)

    async def _connect(self, url):
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        opened = loop.create_future()

        def on_open(connection):
            if not opened.done():
                opened.set_result(connection)

        def on_open_error(connection, exc):
            if not opened.done():
                opened.set_exception(BrokerUnavailable("cannot connect: %r" % exc))

        def on_close(connection, reason):
            self._drop("rabbitmq connection closed: %s" % reason)
            if not self._lost.done():
                self._lost.set_result(reason)
            if not opened.done():
                opened.set_exception(BrokerUnavailable("closed: %s" % reason))

        params = pika.URLParameters(url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        self._connection = TornadoConnection(
            params, on_open_callback=on_open, on_open_error_callback=on_open_error,
            on_close_callback=on_close, custom_ioloop=IOLoop.current())
        connection = await opened
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        channel = await self._open_channel()
        await self._declare(channel)
        channel.add_on_return_callback(self._on_return)
        done = _Callback(self)
        channel.confirm_delivery(self._on_confirm, callback=done)
        await done.future
        self._next_tag = 0
        self._nacked_since = None
        self._channel = channel
        for queue in list(self._consumers):
            await self._start_consumer(queue)
        for subscription in self._subscriptions:
            await self._start_subscription(*subscription)

    async def _open_channel(self):
        opened = _Callback(self)
        channel = self._connection.channel(on_open_callback=opened)
        channel.add_on_close_callback(self._on_channel_closed)
        await opened.future
        return channel

    def _on_channel_closed(self, channel, reason):
        # A channel closed by the broker (a failed declare, a bad ack) is rare and
        # means our state is wrong: start over with a fresh connection.
        if not self._closing and self._connection and self._connection.is_open:
            log.warning("rabbitmq channel %s closed: %s; reconnecting",
                        channel.channel_number, reason)
            self._connection.close()

    async def _declare(self, channel):
        for exchange in self.topology.exchanges:
            done = _Callback(self)
            channel.exchange_declare(exchange, "direct", durable=True, callback=done)
            await done.future
        for spec in self.topology.queues:
            done = _Callback(self)
            channel.queue_declare(spec.name, durable=True, arguments=spec.amqp_arguments,
                                  callback=done)
            await done.future
            for key in spec.routing_keys:
                done = _Callback(self)
                channel.queue_bind(spec.name, spec.exchange, routing_key=key, callback=done)
                await done.future

    def _on_blocked(self, connection, frame):
        log.warning("rabbitmq blocked the connection (resource alarm): refusing uploads")
        self._blocked = True  # publishes already sent wait for their confirm or time out

    def _on_unblocked(self, connection, frame):
        log.info("rabbitmq unblocked the connection")
        self._blocked = False

    def _drop(self, reason):
        """Forget the dead connection: fail everything that waited on it."""
        self._channel = None
        self._blocked = False
        self._consumer_channels.clear()
        self._fail_pending(reason)
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_exception(BrokerUnavailable(reason))

    def _fail_pending(self, reason):
        pending, self._pending = self._pending, {}
        self._returned.clear()
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable(reason))

    async def close(self):
        self._closing = True
        self._stopping.set()
        # Also a connection still opening: pika aborts it, so it never comes up behind us.
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            connection.close()
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner, 5)
            except asyncio.TimeoutError:
                self._runner.cancel()

    # -- publishing -----------------------------------------------------------

    async def publish(self, exchange, routing_key, body, *, message_id=None,
                      content_type=None, headers=None, mandatory=False):
        if not self.ready:
            raise BrokerUnavailable("not connected to rabbitmq" if not self._blocked
                                    else "the broker is blocking publishes (resource alarm)")
        properties = pika.BasicProperties(
            message_id=message_id, content_type=content_type, headers=headers or {},
            delivery_mode=pika.DeliveryMode.Persistent)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._next_tag += 1
        self._pending[self._next_tag] = (future, message_id)
        started = time.monotonic()
        # pika takes bytes only (an upload's body is a view into its request's buffer).
        self._channel.basic_publish(exchange, routing_key, bytes(body), properties,
                                    mandatory=mandatory)
        del body  # pika's frames hold it now; the confirm may take a while
        # A timer on the future itself (wait_for would add a task per publish); a confirm
        # that comes after it finds the future done and is dropped.
        timer = loop.call_later(self.confirm_timeout, _expire, future, self.confirm_timeout)
        try:
            await future
        finally:
            timer.cancel()
        self._confirmed(started)

    async def depths(self):
        """Passive declares, on a channel of their own: a queue that is not there
        closes that channel only, never the publishing one."""
        if not self.ready:
            raise BrokerUnavailable("not connected to rabbitmq")
        opened = _Callback(self)
        channel = self._connection.channel(on_open_callback=opened)
        await opened.future
        closed = _Callback(self)
        channel.add_on_close_callback(lambda ch, reason: closed.future.done() or
                                      closed.future.set_exception(BrokerUnavailable(
                                          "queue depths: %s" % reason)))
        try:
            counts = {}
            for spec in self.topology.queues:
                done = _Callback(self)
                channel.queue_declare(spec.name, passive=True, callback=done)
                await asyncio.wait([done.future, closed.future],
                                   return_when=asyncio.FIRST_COMPLETED)
                if not done.future.done():
                    closed.future.result()  # raises why the channel closed
                counts[spec.name] = done.future.result().method.message_count
            return counts
        finally:
            if channel.is_open:
                channel.close()
            if not closed.future.done():
                closed.future.cancel()

    def _on_return(self, channel, method, properties, body):
        log.warning("rabbitmq returned message %s: %s", properties.message_id, method.reply_text)
        self._returned.add(properties.message_id)

    def _note_confirm(self, ack):
        """A publishing channel that has only been refused for NACKED_FOR seconds is
        started afresh on a new connection.  After a quorum queue's leader moved (its
        node went away) RabbitMQ may go on refusing one channel's publishes to it while
        new channels are taken: seen with 3.10 in the cluster test."""
        if ack:
            self._nacked_since = None
            return
        now = asyncio.get_running_loop().time()
        if self._nacked_since is None:
            self._nacked_since = now
        elif now - self._nacked_since >= NACKED_FOR and self._connection.is_open:
            log.warning("rabbitmq has refused every publish for %.0f s; reconnecting",
                        now - self._nacked_since)
            self._nacked_since = None
            self._connection.close()

    def _on_confirm(self, frame):
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        self._note_confirm(ack)
        tags = ([t for t in self._pending if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        for tag in tags:
            future, message_id = self._pending.pop(tag, (None, None))
            if future is None or future.done():
                continue
            if not ack:
                future.set_exception(BrokerUnavailable("rabbitmq refused the message (nack)"))
            elif message_id in self._returned:
                self._returned.discard(message_id)
                future.set_exception(BrokerUnavailable("no queue took the message (returned)"))
            else:
                future.set_result(None)

    # -- consuming ------------------------------------------------------------

    def consume(self, queue, on_message, prefetch):
        self._consumers[queue] = (on_message, prefetch)
        if self._channel is not None:
            asyncio.ensure_future(self._start_late(self._start_consumer, queue))

    async def _start_late(self, start, *args):
        """A consumer or subscription added while connected; if its channel cannot
        open, reconnect (every one starts again on a new connection)."""
        try:
            await start(*args)
        except Exception as exc:
            log.warning("rabbitmq: cannot consume %s yet (%r); reconnecting", args[0], exc)
            if self._connection is not None and self._connection.is_open:
                self._connection.close()

    async def _start_consumer(self, queue):
        on_message, prefetch = self._consumers[queue]
        channel = await self._open_channel()
        done = _Callback(self)
        channel.basic_qos(prefetch_count=prefetch, callback=done)
        await done.future

        def deliver(ch, method, properties, body):
            on_message(Message(
                body, method.routing_key, properties.message_id, properties.content_type,
                dict(properties.headers or {}), method.redelivered,
                settle=self._settler(ch, method.delivery_tag)))

        done = _Callback(self)
        tag = channel.basic_consume(queue, deliver, callback=done)
        await done.future
        self._consumer_channels[queue] = (channel, tag)

    def subscribe(self, exchange, routing_keys, on_message, on_subscribed=None):
        subscription = (exchange, tuple(routing_keys), on_message, on_subscribed)
        self._subscriptions.append(subscription)
        if self._channel is not None:
            asyncio.ensure_future(self._start_late(self._start_subscription, *subscription))

    async def _start_subscription(self, exchange, routing_keys, on_message, on_subscribed):
        """A server-named queue of this connection's own, bound to ``routing_keys``;
        RabbitMQ deletes it when the connection goes, and the next connection makes
        another (and calls ``on_subscribed`` again: what was published between the
        two was missed)."""
        channel = await self._open_channel()
        declared = _Callback(self)
        channel.queue_declare("", exclusive=True, auto_delete=True, callback=declared)
        queue = (await declared.future).method.queue
        for key in routing_keys:
            done = _Callback(self)
            channel.queue_bind(queue, exchange, routing_key=key, callback=done)
            await done.future

        def deliver(ch, method, properties, body):
            on_message(Message(body, method.routing_key, properties.message_id,
                               properties.content_type, dict(properties.headers or {}),
                               method.redelivered, settle=lambda ack, requeue: None))

        done = _Callback(self)
        channel.basic_consume(queue, deliver, auto_ack=True, callback=done)
        await done.future
        if on_subscribed is not None:
            on_subscribed()

    @staticmethod
    def _settler(channel, delivery_tag):
        def settle(ack, requeue):
            if not channel.is_open:
                return  # the broker requeues it when the channel closes
            if ack:
                channel.basic_ack(delivery_tag)
            else:
                channel.basic_nack(delivery_tag, requeue=requeue)
        return settle

    async def cancel(self, queue):
        self._consumers.pop(queue, None)
        channel, tag = self._consumer_channels.pop(queue, (None, None))
        if channel is not None and channel.is_open:
            done = _Callback(self)
            channel.basic_cancel(tag, callback=done)
            try:
                await asyncio.wait_for(done.future, 5)
            except (asyncio.TimeoutError, BrokerUnavailable):
                pass
