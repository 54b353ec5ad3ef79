"""The in-process broker of the zero-configuration demo, durable in a SQLite file.

It keeps RabbitMQ's semantics where the code depends on them: direct
exchanges routing by key to bound queues, per-consumer prefetch, manual
ack/nack with requeue and the ``redelivered`` flag, round-robin between
consumers, ``mandatory`` publishes of unroutable messages refused, delay
queues whose messages move on to their dead-letter route once their TTL is up,
and subscriptions (``subscribe``: live updates, heard at once, never stored).

Every message is a row of the table ``broker_messages`` (in the app's SQLite
database, or a file of its own, see ``Config.embedded_broker_path``):

- a publish returns once its rows are committed with ``synchronous=FULL``
  (the embedded publisher confirm), so an accepted upload survives Ctrl-C,
  SIGKILL and a power cut;
- a delivery marks its row ``delivered`` before the consumer sees it, so a
  message delivered but unsettled when the process dies comes back at the
  next start with ``redelivered=True``; an ack (or a nack without requeue)
  deletes the row; a nack with requeue leaves it;
- a delay queue's row holds its due time (wall clock), so a delay runs on
  across a restart.

The process keeps only row ids in memory (bodies are read at delivery), and
all SQL runs on one thread of the broker's own, off the IOLoop.  Writes that
arrive together (concurrent publishes, acks) share one transaction and one
fsync: a group commit.  One process at a time may use the file's queues.
"""

import asyncio
import collections
import itertools
import json
import logging
import os
import sqlite3
import time

from broker import Broker, BrokerUnavailable, Message
from priority import helper_executor
from storage.sqlite import connect, insert_row, read_blob, transaction

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    message_id TEXT,
    content_type TEXT,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    due REAL
);
CREATE INDEX IF NOT EXISTS broker_messages_queue ON broker_messages (queue, id);
"""
COLUMNS = "routing_key, message_id, content_type, headers, body"
FIELDS = COLUMNS.split(", ")  # the body last
RETRY_DELAY = 1.0  # seconds before a delivery or a delay move that failed is tried again


class _Entry:
    """A message waiting in a queue: its row, and whether it was delivered before."""
    __slots__ = ("id", "redelivered", "due")

    def __init__(self, row_id, redelivered=False, due=None):
        self.id, self.redelivered, self.due = row_id, redelivered, due


class _Consumer:
    def __init__(self, on_message, prefetch):
        self.on_message = on_message
        self.prefetch = prefetch
        self.unsettled = 0


class _Queue:
    def __init__(self, spec):
        self.spec = spec
        self.ready = collections.deque()
        self.consumers = []
        self.turn = itertools.count()


class MemoryBroker(Broker):
    clock = staticmethod(time.time)  # the wall clock of due times (a test may move it)

    def __init__(self, topology, path=":memory:", confirm_timeout=10.0, metrics=None):
        super().__init__(topology, metrics)
        self.path = path
        self.confirm_timeout = confirm_timeout
        self._bindings = {}  # (exchange, routing key) -> [queue names]
        self._queues = {}
        for spec in topology.queues:
            self._queues[spec.name] = _Queue(spec)
            for key in spec.routing_keys:
                self._bindings.setdefault((spec.exchange, key), []).append(spec.name)
        self._open = False
        self._executor = None
        self._conn = None
        self._pending = []     # [(fn, args, future)] for the next group commit
        self._flushing = None  # the task running group commits
        self._tasks = set()    # deliveries and delay moves in progress
        self._subscribers = {}  # (exchange, routing key) -> [on_message]

    @property
    def ready(self):
        return self._open

    def describe(self):
        where = "memory only" if self.path == ":memory:" else os.path.abspath(self.path)
        return "in-process, queues kept in sqlite at %s" % where

    def depth(self, queue):
        """Messages waiting in ``queue`` (not counting delivered, unsettled ones)."""
        return len(self._queues[queue].ready)

    async def depths(self):
        return {name: self.depth(name) for name in self._queues}

    async def peek(self, queue):
        """The messages waiting in ``queue``, in order, left where they are."""
        ids = [entry.id for entry in self._queues[queue].ready]
        rows = await self._in_thread(self._read, self._conn, ids)
        return [self._message(rows[row_id]) for row_id in ids if row_id in rows]

    # -- the SQLite thread ------------------------------------------------------

    def _in_thread(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _write(self, fn, *args):
        """A future of ``fn(conn, *args)``, run in the next group commit."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, future))
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())
        return future

    def _write_soon(self, fn, *args):
        """A write nobody waits on (an ack): a failure is logged; the row then stays,
        and the message comes back at the next start (delivery is at least once)."""
        def done(future):
            if future.exception() is not None:
                log.error("in-process broker: %s failed: %s", fn.__name__, future.exception())
        self._write(fn, *args).add_done_callback(done)

    async def _flush(self):
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._in_thread(
                        self._commit, [(fn, args) for fn, args, _ in batch])
                except Exception as exc:
                    for *_, future in batch:
                        future.done() or future.set_exception(exc)
                else:
                    for (*_, future), result in zip(batch, results):
                        future.done() or future.set_result(result)
        finally:
            self._flushing = None

    def _commit(self, calls):
        with transaction(self._conn, write=True) as conn:
            return [fn(conn, *args) for fn, args in calls]

    def _open_db(self):
        self._conn = connect(self.path, synchronous="FULL")
        self._conn.executescript(SCHEMA)
        names = list(self._queues)
        return self._conn.execute(
            "SELECT id, queue, delivered, due FROM broker_messages WHERE queue IN (%s) "
            "ORDER BY id" % ",".join("?" * len(names)), names).fetchall()

    def _close_db(self):
        names = list(self._queues)
        kept = self._conn.execute("SELECT COUNT(*) FROM broker_messages WHERE queue IN (%s)"
                                  % ",".join("?" * len(names)), names).fetchone()[0]
        self._conn.close()
        return kept

    @staticmethod
    def _insert(conn, queues, row):
        """Rows for one message in each of ``queues`` [(name, due)]; their ids.  (The
        body is written and read by blob I/O: ``storage.sqlite.insert_row``.)"""
        return [insert_row(conn, "broker_messages", dict(queue=name, due=due,
                                                         **dict(zip(FIELDS, row))))
                for name, due in queues]

    @staticmethod
    def _read(conn, ids):
        """{id: (routing key, message id, content type, headers, body)} of these rows."""
        rows = conn.execute("SELECT id, %s FROM broker_messages WHERE id IN (%s)"
                            % (", ".join(FIELDS[:-1]), ",".join("?" * len(ids))), ids).fetchall()
        return {row[0]: (*row[1:], read_blob(conn, "broker_messages", "body", row[0]))
                for row in rows}

    def _take(self, conn, ids):
        """Mark rows delivered and read them."""
        conn.execute("UPDATE broker_messages SET delivered = 1 WHERE id IN (%s)"
                     % ",".join("?" * len(ids)), ids)
        return self._read(conn, ids)

    @staticmethod
    def _message(row, redelivered=False):
        routing_key, message_id, content_type, headers, body = row
        return Message(body, routing_key, message_id, content_type, json.loads(headers),
                       redelivered=redelivered)

    @staticmethod
    def _delete(conn, row_id):
        conn.execute("DELETE FROM broker_messages WHERE id = ?", (row_id,))

    @staticmethod
    def _move(conn, row_id, targets, routing_key):
        """Dead-letter a row onwards: a fresh row in each target queue, the old one gone."""
        ids = [conn.execute("INSERT INTO broker_messages (queue, %s) SELECT ?, ?, message_id, "
                            "content_type, headers, body FROM broker_messages WHERE id = ?"
                            % COLUMNS, (target, routing_key, row_id)).lastrowid
               for target in targets]
        conn.execute("DELETE FROM broker_messages WHERE id = ?", (row_id,))
        return ids

    # -- the contract -----------------------------------------------------------

    async def start(self):
        self._executor = helper_executor("broker", 1)
        rows = await self._in_thread(self._open_db)
        for row_id, name, delivered, due in rows:
            self._enqueue(name, _Entry(row_id, bool(delivered), due))
        self._open = True
        if rows:
            log.info("in-process broker: %d message(s) resumed from the last run", len(rows))

    async def publish(self, exchange, routing_key, body, *, message_id=None,
                      content_type=None, headers=None, mandatory=False):
        if not self._open:
            raise BrokerUnavailable("the in-process broker is closed")
        names = self._bindings.get((exchange, routing_key), [])
        subscribers = self._subscribers.get((exchange, routing_key), [])
        if not names and not subscribers and mandatory:
            raise BrokerUnavailable("no queue is bound to %s/%s" % (exchange, routing_key))
        for on_message in subscribers:  # heard now or never: nothing of them is kept
            asyncio.get_running_loop().call_soon(on_message, Message(
                bytes(body), routing_key, message_id, content_type, dict(headers or {}),
                settle=lambda ack, requeue: None))
        if not names:
            return
        now = self.clock()
        queues = [(name, None if self._queues[name].spec.ttl is None
                   else now + self._queues[name].spec.ttl) for name in names]
        row = (routing_key, message_id, content_type, json.dumps(headers or {}), body)
        started = time.monotonic()
        written = self._write(self._insert, queues, row)

        def enqueue(future):  # also after a timeout: the message is in the broker then
            if future.exception() is None and self._open:
                for (name, due), row_id in zip(queues, future.result()):
                    self._enqueue(name, _Entry(row_id, due=due))
        written.add_done_callback(enqueue)
        try:
            await asyncio.wait_for(asyncio.shield(written), self.confirm_timeout)
        except asyncio.TimeoutError:
            raise BrokerUnavailable("the in-process broker did not store the message within "
                                    "%gs" % self.confirm_timeout) from None
        except sqlite3.Error as exc:
            raise BrokerUnavailable("the in-process broker could not store the message: %s"
                                    % exc) from None
        self._confirmed(started)

    def consume(self, queue, on_message, prefetch):
        self._queues[queue].consumers.append(_Consumer(on_message, max(prefetch, 1)))
        self._schedule(queue)

    async def cancel(self, queue):
        self._queues[queue].consumers.clear()

    def subscribe(self, exchange, routing_keys, on_message, on_subscribed=None):
        for key in routing_keys:
            self._subscribers.setdefault((exchange, key), []).append(on_message)
        if on_subscribed is not None:
            on_subscribed()  # in place at once, and never lost: there is no connection

    async def close(self):
        was_open, self._open = self._open, False
        for queue in self._queues.values():
            queue.consumers.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._flushing is not None:
            await self._flushing  # the acks and moves already asked for reach the disk
        if self._executor is None:
            return
        if was_open:
            kept = await self._in_thread(self._close_db)
            log.info("in-process broker: closed; %d message(s) kept for the next start", kept)
        self._executor.shutdown(wait=True)
        self._executor = None

    # -- in memory --------------------------------------------------------------

    def _enqueue(self, name, entry):
        self._queues[name].ready.append(entry)
        if entry.due is not None:
            asyncio.get_running_loop().call_later(
                max(entry.due - self.clock(), 0), self._expire, name, entry)
        self._schedule(name)

    def _schedule(self, name):
        asyncio.get_running_loop().call_soon(self._dispatch, name)

    def _spawn(self, coroutine):
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, name):
        queue = self._queues[name]
        batch = []
        while self._open and queue.ready:
            free = [c for c in queue.consumers if c.unsettled < c.prefetch]
            if not free:
                break
            consumer = free[next(queue.turn) % len(free)]
            consumer.unsettled += 1
            batch.append((consumer, queue.ready.popleft()))
        if batch:
            self._spawn(self._deliver(name, batch))

    async def _deliver(self, name, batch):
        queue = self._queues[name]
        try:
            rows = await self._write(self._take, [entry.id for _, entry in batch])
        except Exception as exc:
            log.error("in-process broker: could not read messages of %s: %s", name, exc)
            rows = None
        taken = [] if rows is None or not self._open else [
            (consumer, entry) for consumer, entry in batch
            if consumer in queue.consumers and entry.id in rows]  # (a row gone: not ours)
        for consumer, entry in reversed(batch):
            if (consumer, entry) not in taken:
                consumer.unsettled -= 1
                if rows is None or entry.id in rows:
                    queue.ready.appendleft(entry)  # not delivered: back to the queue's front
        if rows is None:
            asyncio.get_running_loop().call_later(RETRY_DELAY, self._dispatch, name)
            return
        for consumer, entry in taken:
            message = self._message(rows[entry.id], entry.redelivered)
            message.settle = self._settler(name, consumer, entry)
            consumer.on_message(message)
        self._schedule(name)

    def _settler(self, name, consumer, entry):
        settled = False

        def settle(ack, requeue):
            nonlocal settled
            if settled:
                raise RuntimeError("message %s settled twice" % entry.id)
            settled = True
            consumer.unsettled -= 1
            if not self._open:
                return  # its row stays: it comes back at the next start
            if not ack and requeue:
                entry.redelivered = True
                self._queues[name].ready.appendleft(entry)
            else:
                self._write_soon(self._delete, entry.id)
            self._schedule(name)
        return settle

    def _expire(self, name, entry):
        """A delay queue's message has waited long enough: dead-letter it onwards."""
        ready = self._queues[name].ready
        if not self._open or entry not in ready:
            return
        ready.remove(entry)
        self._spawn(self._move_on(name, entry))

    async def _move_on(self, name, entry):
        exchange, routing_key = self._queues[name].spec.dead_letter
        targets = self._bindings.get((exchange, routing_key), [])
        try:
            ids = await self._write(self._move, entry.id, targets, routing_key)
        except Exception as exc:
            log.error("in-process broker: could not move a message on from %s: %s", name, exc)
            entry.due = self.clock() + RETRY_DELAY
            if self._open:
                self._enqueue(name, entry)
            return
        if self._open:
            for target, row_id in zip(targets, ids):
                self._enqueue(target, _Entry(row_id))
