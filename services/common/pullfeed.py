"""A durable pull consumer's messages as they arrive, with pull requests kept outstanding.

Why not nats-py's ``PullSubscription.fetch``: each fetch is a round trip (a pull request, then the
messages, then a "no messages" status to end it), nothing is delivered while the caller applies
the batch it got, and every message waited for costs a new Task, a ``uuid4`` and a ``wait_for``
timer (~10 % of the datapath worker under load, and one extra request and status message per
single change). A :class:`PullFeed` instead keeps up to ``window`` messages requested at all
times: one subscription callback appends arriving messages to a buffer (called from the read
loop, in arrival order, by :class:`services.common.wire.Delivery`: no queue hop and callback
coroutine per message; the ordinary callback where that is unavailable), and
:meth:`PullFeed.next_batch` hands out what is buffered (waking as soon as one message is there)
and tops the request up *before* the caller applies, so the next messages travel while the
current batch is written. Acking stays the caller's business and happens after its effect, as
before; the feed never acks.

Bookkeeping is a count of messages requested and not yet delivered: each message takes one off,
each request that ends (408 with ``Nats-Pending-Messages`` when it expires) takes off what it did
not deliver. A request can also be lost without an answer (the server restarted under a
reconnect): a reconnect, or silence longer than a request's life, resets the count so the feed
asks again. Over-asking is harmless (the consumer's ``max_ack_pending`` bounds delivery);
under-asking would stall, so every doubt resolves toward asking.

A consumer that is gone (409 "Consumer Deleted", or 503 no responders for the pull request)
raises :class:`ConsumerGoneError` from :meth:`next_batch`; the caller recreates the consumer and
calls :meth:`reset`, which also drops buffered messages of the old consumer: their ack subjects
carry the old consumer's sequences, and with AckPolicy ALL one of them acked on the new consumer
would ack messages nobody applied.

The pure part, :func:`request_size` and :func:`status_outcome`, decides what to ask for and what
a status message means; the class only does the I/O around them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Literal, NamedTuple

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.common.wire import delivery_for

log = logging.getLogger(__name__)

GRACE = 2.0  # seconds past a request's expiry after which a silent feed asks again


class ConsumerGoneError(RuntimeError):
    """The durable consumer behind a :class:`PullFeed` no longer exists."""


class StatusOutcome(NamedTuple):
    """What one status message on the feed's inbox means.

    ``verb``: ``ignore`` (heartbeat), ``ended`` (a request is over: ``undelivered`` of its
    messages will not come; None when the server did not say, so assume none of any request
    will), ``gone`` (the consumer no longer exists) or ``error`` (ended, and worth a warning).
    """

    verb: Literal["ignore", "ended", "gone", "error"]
    undelivered: int | None = None


def status_outcome(status: str, description: str, pending: str | None) -> StatusOutcome:
    """Pure: the meaning of a JetStream pull status (see :class:`StatusOutcome`)."""
    if status == "100":
        return StatusOutcome("ignore")
    if status == "503" or (status == "409" and description.strip() == "Consumer Deleted"):
        return StatusOutcome("gone")
    undelivered: int | None = None
    if pending is not None:
        with contextlib.suppress(ValueError):
            undelivered = max(0, int(pending))
    if status in ("404", "408"):
        return StatusOutcome("ended", undelivered)
    return StatusOutcome("error", undelivered)


def request_size(outstanding: int, window: int) -> int:
    """Pure: how many messages to ask for now (0: enough are on their way). Tops the request up
    to ``window`` once half of it has arrived, so one request per half window at full speed
    and none per message when idle."""
    return window - outstanding if outstanding <= window // 2 else 0


class PullFeed:
    """Messages of one durable pull consumer, as they arrive (see the module docstring)."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        *,
        window: int = 1024,
        expires: float = 5.0,
        api_prefix: str = "$JS.API",
    ) -> None:
        if window < 2:
            raise ValueError(f"pull feed {stream}/{durable}: window must be at least 2")
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.name = f"{stream}/{durable}"
        self.window = window
        self.expires = expires
        self._inbox = ""
        self._sub: Subscription | None = None
        self._buf: collections.deque[Msg] = collections.deque()
        self._wake = asyncio.Event()
        self._outstanding = 0
        self._asked_at = 0.0
        self._heard_at = 0.0
        self._hold_until = 0.0
        self._gone = False
        self._reconnects = 0
        self.requests = 0  # pull requests sent (tests, metrics)

    @property
    def outstanding(self) -> int:
        """Messages requested and not delivered yet, as far as the feed knows."""
        return self._outstanding

    @property
    def buffered(self) -> int:
        """Messages delivered and not handed out yet."""
        return len(self._buf)

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        delivery = delivery_for(self._nc)
        if delivery is not None:  # straight from the read loop (see wire.Delivery)
            delivery.msgs[self._sub._id] = self._take
        self._reconnects = self._nc.stats["reconnects"]
        await self._top_up()

    async def close(self) -> None:
        """Unsubscribe (the server drops requests whose inbox lost interest) and hand back what
        was delivered but never handed out, so it is redelivered now, not after ``ack_wait``."""
        sub, self._sub = self._sub, None
        if sub is not None:
            delivery = delivery_for(self._nc)
            if delivery is not None:
                delivery.msgs.pop(sub._id, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        unhandled, self._buf = list(self._buf), collections.deque()
        for msg in unhandled:
            with contextlib.suppress(Exception):
                await msg.nak()

    def reset(self) -> None:
        """After the consumer was recreated: forget its requests and drop its buffered messages
        (see the module docstring for why they must not be acked)."""
        self._buf.clear()
        self._outstanding = 0
        self._gone = False
        self._hold_until = 0.0

    async def next_batch(self, limit: int, wait: float) -> list[Msg]:
        """Up to ``limit`` messages, as soon as at least one is there; [] after ``wait`` seconds."""
        await self._top_up()
        if not self._buf:
            loop = asyncio.get_running_loop()
            wake = self._wake
            deadline = loop.time() + wait
            timer = loop.call_at(deadline, wake.set)  # cheaper than asyncio.timeout() per wait
            try:
                while not self._buf and not self._gone:
                    wake.clear()
                    await wake.wait()
                    if loop.time() >= deadline:
                        break
                    await self._top_up()  # a status may have ended a request
            finally:
                timer.cancel()
        buf = self._buf
        out = [buf.popleft() for _ in range(min(limit, len(buf)))]
        await self._top_up()  # the next messages travel while the caller applies these
        return out

    async def _top_up(self) -> None:
        if self._gone:
            raise ConsumerGoneError(f"consumer {self.name} is gone")
        now = time.monotonic()
        reconnects = self._nc.stats["reconnects"]
        if reconnects != self._reconnects:  # requests may have died with the old server
            self._reconnects, self._outstanding = reconnects, 0
        elif self._outstanding and now - max(self._asked_at, self._heard_at) > self.expires + GRACE:
            self._outstanding = 0  # silence past every request's expiry: lost, ask again
        size = request_size(self._outstanding, self.window)
        if not size or now < self._hold_until or self._sub is None:
            return
        body = {"batch": size, "expires": int(self.expires * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=self._inbox)
        self._outstanding += size
        self._asked_at = now
        self.requests += 1

    async def _on_msg(self, msg: Msg) -> None:
        self._take(msg)

    def _take(self, msg: Msg) -> None:
        self._heard_at = time.monotonic()
        if msg.reply:  # a stream message (its reply is the ack subject)
            self._buf.append(msg)
            if self._outstanding:
                self._outstanding -= 1
            self._wake.set()
            return
        headers = msg.headers or {}
        outcome = status_outcome(
            headers.get("Status", ""),
            headers.get("Description", ""),
            headers.get("Nats-Pending-Messages"),
        )
        if outcome.verb == "ignore":
            return
        if outcome.verb == "gone":
            self._gone = True
        elif outcome.undelivered is None:
            self._outstanding = 0
        else:
            self._outstanding = max(0, self._outstanding - outcome.undelivered)
        if outcome.verb == "error":  # e.g. 409 Exceeded MaxWaiting: do not hammer the server
            self._hold_until = self._heard_at + 0.2
            log.warning("pull feed %s: %s %s", self.name, headers.get("Status"),
                        headers.get("Description", ""))  # fmt: skip
        self._wake.set()
