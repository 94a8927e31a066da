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

Acks of a batch that gave up waiting (its id unregistered) are dropped: the batch retries those
messages itself and the stream's duplicate window makes the retry safe.
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

__all__ = ["AckInbox", "ack_inbox", "outcome"]

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
        await nc.subscribe(self.prefix + ">", cb=self._on_reply)

    def register(self, settle: Settle) -> str:
        """A new batch; returns the reply prefix its messages use (append the index)."""
        bid = str(next(self._ids))
        self._batches[bid] = settle
        return f"{self.prefix}{bid}."

    def unregister(self, reply_prefix: str) -> None:
        self._batches.pop(reply_prefix[self._plen : -1], None)

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
