"""The NATS JetStream bus: publishing with dedup + trace context, and the one import for callers.

Why this shape: every service talks to the bus the same way, so the rules live here once.
- Every publish carries a deterministic ``Nats-Msg-Id`` (so a retry or a replayed watch event is
  dropped by the stream's duplicate window) and W3C trace context. Transient failures (timeouts,
  no responders while the server restarts, JetStream briefly unavailable) are retried a bounded
  number of times: safe precisely because of the msg id.
- :func:`publish_batch` pipelines many publishes through a bounded window of in-flight requests
  for throughput (a relist of 100k objects), keeping the same per-message guarantees. It sends
  with plain core publishes whose replies land on one wildcard subscription per connection
  (:mod:`services.common.acks`): nats-py's ``publish_async`` future per message was about a
  third of the watcher's CPU per event. The commands themselves are built by
  :mod:`services.common.wire` (the bytes ``Client.publish`` writes, without its per-message
  Python): 4.7 -> 1.7 us per message queued; ``Client.publish`` stays the fallback.

Connecting lives in :mod:`services.common.connection`, consumption in
:mod:`services.common.consume` and provisioning in :mod:`services.common.streams`; all are
re-exported here so callers import one module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError
from opentelemetry.context import Context
from opentelemetry.trace import Span
from pydantic import BaseModel

from services.common import metrics, tracing
from services.common.acks import Batch, ack_inbox, connection_of
from services.common.connection import Bus, connect_bus, reconnect_delay
from services.common.consume import LastPerSubject, consume, last_per_subject
from services.common.streams import ProvisionError, provision
from services.common.wire import header_block, hpub, msg_id_block, wire_for

__all__ = [
    "Bus",
    "LastPerSubject",
    "Outgoing",
    "ProvisionError",
    "PublishBatchError",
    "PublishError",
    "connect_bus",
    "consume",
    "encode",
    "last_per_subject",
    "provision",
    "publish",
    "publish_batch",
    "reconnect_delay",
]

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"


class PublishError(RuntimeError):
    """A publish that still failed after all retries."""


class PublishBatchError(PublishError):
    """Some publishes of a batch failed; ``errors`` maps batch index -> exception."""

    def __init__(self, errors: dict[int, BaseException], acks: list[PubAck | None]) -> None:
        first = min(errors)
        super().__init__(
            f"{len(errors)} of {len(acks)} publishes failed; first #{first}: {errors[first]!r}"
        )
        self.errors = errors
        self.acks = acks


class Outgoing(NamedTuple):
    """One message of a :func:`publish_batch`; ``parent``: the trace context its PRODUCER span
    continues (default: the context current when the batch is published)."""

    subject: str
    data: bytes | BaseModel
    msg_id: str
    headers: Mapping[str, str] | None = None
    parent: Context | None = None


def _encode_for(subject: str, data: bytes | BaseModel) -> bytes:
    try:
        return encode(data)
    except TypeError as exc:
        raise TypeError(f"publish to {subject}: {exc}") from exc


def encode(data: bytes | BaseModel) -> bytes:
    """Bytes as they are; a pydantic model as its JSON."""
    if isinstance(data, BaseModel):
        return data.model_dump_json().encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"publish data must be bytes or a pydantic model, not {type(data).__name__}")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError | NoStreamResponseError):
        return True
    if isinstance(exc, nats.errors.NoRespondersError | nats.errors.OutboundBufferLimitError):
        return True
    if isinstance(exc, nats.errors.ConnectionReconnectingError):
        return True
    return isinstance(exc, APIError) and exc.code in (503, 504)


async def publish(
    js: JetStreamContext,
    subject: str,
    data: bytes | BaseModel,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    ack_timeout: float | None = None,
    attempts: int = 8,
    parent: Context | None = None,
) -> PubAck:
    """Publish one message to JetStream and wait for the stream's ack (see module doc).
    ``parent``: the trace context of its PRODUCER span (default: the current one)."""
    if not msg_id:
        raise ValueError(f"publish to {subject}: msg_id must be a non-empty string")
    payload = _encode_for(subject, data)
    template = tracing.subject_template(subject)
    with tracing.producer_span(subject, msg_id, context=parent) as span:
        hdrs = tracing.inject(headers)
        hdrs[MSG_ID_HEADER] = msg_id
        for attempt in range(attempts):
            try:
                ack = await js.publish(subject, payload, timeout=ack_timeout, headers=hdrs)
            except Exception as exc:
                if not _is_transient(exc) or attempt == attempts - 1:
                    metrics.PUBLISH_ERRORS.labels(template).inc()
                    span.record_exception(exc)
                    raise PublishError(f"publish {subject} (msg id {msg_id}): {exc!r}") from exc
                metrics.PUBLISH_RETRIES.labels(template).inc()
                delay = reconnect_delay(attempt, base=0.1)
                log.debug("publish %s: %r; retry %d in %.2fs", subject, exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                continue
            span.set_attribute(tracing.ATTR_STREAM, ack.stream)
            span.set_attribute(tracing.ATTR_STREAM_SEQUENCE, ack.seq)
            if ack.duplicate:
                span.set_attribute("messaging.nats.duplicate", True)
            return ack
    raise AssertionError("unreachable")  # pragma: no cover


async def publish_batch(
    js: JetStreamContext,
    items: Iterable[Outgoing],
    *,
    window: int = 1024,
    ack_timeout: float = 5.0,
    attempts: int = 8,
) -> list[PubAck]:
    """Publish many messages pipelined, at most ``window`` unacknowledged; acks in input order.

    The fast path sends each message with a reply subject of the connection's
    :class:`~services.common.acks.AckInbox` and does not wait; the acks settle the batch as they
    come. Anything that did not succeed there (no ack within ``ack_timeout``, a transient error,
    a disconnect) goes through :func:`publish` with its retries afterwards, which is safe
    because of the msg ids. Permanent failures do not stop the batch; a
    :class:`PublishBatchError` reports them at the end (publishing the whole batch again is safe).
    """
    queue = list(items)
    payloads = [_encode_for(o.subject, o.data) for o in queue]
    batch = Batch(len(queue))
    try:
        inbox = await ack_inbox(js)
    except Exception as exc:  # no reply subscription (disconnected?): every message retries
        log.debug("publish_batch: no ack inbox (%r); publishing one by one", exc)
        batch.retry.extend(range(len(queue)))
    else:
        reply = inbox.register(batch.settle)
        try:
            await _pipeline(connection_of(js), queue, payloads, batch, reply, window, ack_timeout)
        finally:
            inbox.unregister(reply)
    await _publish_each(
        js, queue, sorted(batch.retry), batch.acks, batch.errors, ack_timeout, attempts
    )
    if batch.errors:
        raise PublishBatchError(batch.errors, batch.acks)
    return [a for a in batch.acks if a is not None]


async def _pipeline(
    nc: Client,
    queue: list[Outgoing],
    payloads: list[bytes],
    batch: Batch,
    reply: str,
    window: int,
    ack_timeout: float,
) -> None:
    """The fast path: send everything with at most ``window`` in flight, then await the acks.

    Commands go to the connection's buffer through :mod:`services.common.wire` (same bytes,
    one flusher kick per run); a message it declines goes through ``Client.publish``."""
    window = max(1, window)
    inflight = batch.inflight
    traced = tracing.enabled()  # once per batch: with tracing off a message needs no span
    send = nc.publish
    wired = wire_for(nc)
    for i, o in enumerate(queue):
        if len(inflight) >= window:  # only then wait: an extra yield per message costs a syscall
            if wired is not None:
                await wired.kick()
            await batch.drain(window - 1, ack_timeout)
        span: Span | None = None
        hdrs: dict[str, str] | None = None  # only the msg id: built if Client.publish sends it
        if traced:
            span = tracing.start_producer_span(o.subject, o.msg_id, context=o.parent)
            hdrs = tracing.inject_span(o.headers, span)
            hdrs[MSG_ID_HEADER] = o.msg_id
        elif o.headers:
            hdrs = {**o.headers, MSG_ID_HEADER: o.msg_id}
        inflight[i] = span  # before sending: the ack may be processed while publish yields
        payload = payloads[i]
        if wired is not None and wired.ready(payload):
            block = msg_id_block(o.msg_id) if hdrs is None else header_block(hdrs)
            cmd = hpub(o.subject, f"{reply}{i}", block, payload) if block is not None else None
            if cmd is not None:
                if wired.push(cmd, len(payload)):
                    await wired.force_flush()
                continue
        if hdrs is None:
            hdrs = {MSG_ID_HEADER: o.msg_id}
        try:
            await send(o.subject, payload, reply=f"{reply}{i}", headers=hdrs)
        except Exception:
            inflight.pop(i, None)
            if span is not None:
                span.end()
            batch.retry.append(i)
    if wired is not None:
        await wired.kick()
    if inflight:
        await batch.drain(0, ack_timeout)


async def _publish_each(
    js: JetStreamContext,
    queue: list[Outgoing],
    indices: list[int],
    acks: list[PubAck | None],
    errors: dict[int, BaseException],
    ack_timeout: float,
    attempts: int,
) -> None:
    """The slow path of publish_batch: each message through :func:`publish`, 64 at a time."""
    cursor = iter(indices)

    async def worker() -> None:
        for i in cursor:
            o = queue[i]
            try:
                acks[i] = await publish(
                    js,
                    o.subject,
                    o.data,
                    msg_id=o.msg_id,
                    headers=o.headers,
                    ack_timeout=ack_timeout,
                    attempts=attempts,
                    parent=o.parent,
                )
            except PublishError as exc:
                errors[i] = exc

    await asyncio.gather(*(worker() for _ in range(min(64, len(indices)))))
