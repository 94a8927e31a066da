"""PubAck collection for pipelined publishes: one wildcard reply subscription per connection.

Why this shape: nats-py's ``publish_async`` pays, per message, a semaphore acquire, a NUID and
``os.urandom`` for the reply token, an ``asyncio.Future`` with a done callback, a dict entry keyed
by the decoded token and ``PubAck.from_response`` (a ``dataclasses.fields`` walk); that was about a
third of the watcher's CPU per published event. Here a connection gets ONE subscription on
``<inbox>.>``; a batch registers under a short id and sends each message with the reply subject
``<inbox>.<batch>.<index>``, so an ack is routed by two string splits and a dict lookup to a plain
callback of the batch: no per-message future, no random bytes. The reply is decoded here into
exactly what nats-py would have produced (a :class:`PubAck`, ``NoStreamResponseError`` for a
no-responders status, the ``APIError`` subclass for an error reply); the batch hands every failed
message to its retry path (:func:`~services.common.bus.publish`), so callers get the same
``PublishError`` and metric as before. (nats-py's own reply handler let ``APIError.from_error``
raise inside the callback, so an error PubAck used to stall the batch for ``ack_timeout``.)
A plain PubAck (no headers, the exact shape nats-server writes) is settled straight from the
connection's read loop by :class:`services.common.wire.Delivery` (no ``Msg``, queue hop or
callback coroutine); anything else takes the callback.

:class:`Batch` is one batch's side: acks in input order, the in-flight window (one wake-up
future, set only when the sender waits) and what goes to the retry path. Acks of a batch that
gave up waiting (its id unregistered, or a message already handed to the retry path) are
dropped: the batch retries those messages itself and the stream's duplicate window makes the
retry safe.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import weakref
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError
from opentelemetry.trace import Span

from services.common import tracing
from services.common.wire import delivery_for

__all__ = ["AckInbox", "Batch", "ack_inbox", "connection_of", "outcome"]

Settle = Callable[[int, "PubAck | BaseException"], None]

NO_RESPONDERS = "503"
_STATUS = "Status"


# the PubAck nats-server writes for a stored (or deduplicated) message, byte for byte; anything
# else (a domain, an error, a field a newer server adds) takes the json path: -1.8 us per ack
_PLAIN_ACK = re.compile(rb'\{"stream":"([^"\\]+)","seq":(\d+)(,"duplicate":true)?\}')


def outcome(msg: Msg) -> PubAck | BaseException:
    """What JetStream answered to one publish: its PubAck or the error nats-py would raise."""
    headers = msg.headers
    if not headers and (plain := _PLAIN_ACK.fullmatch(msg.data)) is not None:
        return PubAck(
            stream=plain[1].decode(), seq=int(plain[2]), duplicate=True if plain[3] else None
        )
    if headers and headers.get(_STATUS) == NO_RESPONDERS:
        return NoStreamResponseError()
    try:
        resp: Any = json.loads(msg.data)
    except ValueError:
        return APIError(description=f"unreadable PubAck on {msg.subject}: {msg.data[:200]!r}")
    if not isinstance(resp, dict):
        return APIError(description=f"unreadable PubAck on {msg.subject}: {msg.data[:200]!r}")
    if "error" in resp:
        try:
            APIError.from_error(resp["error"])  # raises the matching subclass (never returns)
        except APIError as exc:
            return exc
        except (TypeError, KeyError):
            pass
        return APIError(description=f"PubAck error on {msg.subject}: {resp['error']!r}")
    if "stream" not in resp or "seq" not in resp:
        return APIError(description=f"PubAck on {msg.subject} without stream/seq: {resp!r}")
    return PubAck.from_response(resp)  # exactly nats-py's reading of any other shape


class AckInbox:
    """The reply subscription of one connection and the batches waiting on it."""

    def __init__(self, inbox: str) -> None:
        # no reference to the connection: it is the key of the WeakKeyDictionary holding us
        self.prefix = inbox + "."
        self._plen = len(self.prefix)
        self._batches: dict[str, Settle] = {}
        self._ids = itertools.count()

    async def start(self, nc: Client) -> None:
        sub = await nc.subscribe(self.prefix + ">", cb=self._on_reply)
        delivery = delivery_for(nc)
        if delivery is not None:  # plain acks straight from the read loop (see wire.Delivery)
            delivery.raw[sub._id] = self._on_raw

    def register(self, settle: Settle) -> str:
        """A new batch; returns the reply prefix its messages use (append the index)."""
        bid = str(next(self._ids))
        self._batches[bid] = settle
        return f"{self.prefix}{bid}."

    def unregister(self, reply_prefix: str) -> None:
        self._batches.pop(reply_prefix[self._plen : -1], None)

    def _on_raw(self, subject: bytes, data: bytes, headers: bytes | None) -> bool:
        """A plain PubAck as it came off the socket, as :meth:`_on_reply` would handle it;
        False (untouched) for anything else, which then arrives at :meth:`_on_reply`."""
        if headers or (plain := _PLAIN_ACK.fullmatch(data)) is None:
            return False
        try:
            bid, _, index = subject[self._plen :].decode().partition(".")
        except UnicodeDecodeError:
            return False
        if not (index.isdigit() and index.isascii()):
            return False
        settle = self._batches.get(bid)
        if settle is not None:
            dup = True if plain[3] else None
            settle(int(index), PubAck(stream=plain[1].decode(), seq=int(plain[2]), duplicate=dup))
        return True

    async def _on_reply(self, msg: Msg) -> None:
        bid, _, index = msg.subject[self._plen :].partition(".")
        settle = self._batches.get(bid)
        if settle is not None and index.isdigit():
            settle(int(index), outcome(msg))


_INBOXES: weakref.WeakKeyDictionary[Client, asyncio.Future[AckInbox]] = weakref.WeakKeyDictionary()


def connection_of(js: JetStreamContext) -> Client:
    """The connection under a JetStream context (nats-py keeps it as ``_nc`` in every version)."""
    nc = js._nc
    if not isinstance(nc, Client):  # pragma: no cover - a nats-py that changed its internals
        raise TypeError(f"JetStreamContext without a NATS client (got {type(nc).__name__})")
    return nc


async def ack_inbox(js: JetStreamContext) -> AckInbox:
    """The connection's :class:`AckInbox`, subscribing once (concurrent callers share it)."""
    nc = connection_of(js)
    pending = _INBOXES.get(nc)
    if pending is None or (pending.done() and (pending.cancelled() or pending.exception())):
        pending = _INBOXES[nc] = asyncio.ensure_future(_open(nc))
    return await asyncio.shield(pending)


async def _open(nc: Client) -> AckInbox:
    inbox = AckInbox(nc.new_inbox())
    await inbox.start(nc)
    return inbox


class Batch:
    """Acks, errors and the in-flight window of one ``publish_batch``; settled by the AckInbox."""

    __slots__ = ("acks", "errors", "inflight", "limit", "retry", "waiter")

    def __init__(self, size: int) -> None:
        self.acks: list[PubAck | None] = [None] * size
        self.errors: dict[int, BaseException] = {}
        self.retry: list[int] = []
        self.inflight: dict[int, Span | None] = {}  # index -> its PRODUCER span (if traced)
        self.waiter: asyncio.Future[None] | None = None
        self.limit = 0

    def settle(self, i: int, result: PubAck | BaseException) -> None:
        inflight = self.inflight
        if i not in inflight:  # a late ack of a message already handed to the retry path
            return
        span = inflight.pop(i)
        if isinstance(result, PubAck):
            self.acks[i] = result
            if span is not None:
                span.set_attribute(tracing.ATTR_STREAM, result.stream)
                span.set_attribute(tracing.ATTR_STREAM_SEQUENCE, result.seq)
        else:  # the retry path decides: a retry if transient, else the PublishError + metric
            self.retry.append(i)
            if span is not None:
                span.record_exception(result)
        if span is not None:
            span.end()
        waiter = self.waiter
        if waiter is not None and len(inflight) <= self.limit and not waiter.done():
            waiter.set_result(None)

    async def drain(self, limit: int, ack_timeout: float) -> None:
        """Wait until at most ``limit`` are in flight; after ``ack_timeout`` without an ack the rest
        go to the retry path (acks stopped coming: a disconnect?)."""
        loop = asyncio.get_running_loop()
        while len(self.inflight) > limit:
            self.limit = limit
            self.waiter = loop.create_future()
            before = len(self.inflight)
            try:
                await asyncio.wait_for(self.waiter, ack_timeout)
            except TimeoutError:
                if len(self.inflight) < before:
                    continue  # progress after all (the wake-up raced the timeout)
                for span in self.inflight.values():
                    if span is not None:
                        span.end()
                self.retry.extend(self.inflight)
                self.inflight.clear()
            finally:
                self.waiter = None
