"""The NATS JetStream bus: publishing with dedup + trace context, and the one import for callers.

Why this shape: every service talks to the bus the same way, so the rules live here once.
- Every publish carries a deterministic ``Nats-Msg-Id`` (so a retry or a replayed watch event is
  dropped by the stream's duplicate window) and W3C trace context. Transient failures (timeouts,
  no responders while the server restarts, JetStream briefly unavailable) are retried a bounded
  number of times: safe precisely because of the msg id.
- :func:`publish_batch` pipelines many publishes through a bounded window of in-flight requests
  for throughput (a relist of 100k objects), keeping the same per-message guarantees.

Connecting lives in :mod:`services.common.connection`, consumption in
:mod:`services.common.consume` and provisioning in :mod:`services.common.streams`; all are
re-exported here so callers import one module.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError
from opentelemetry.context import Context
from opentelemetry.trace import Span
from pydantic import BaseModel

from services.common import metrics, tracing
from services.common.connection import Bus, connect_bus, reconnect_delay
from services.common.consume import LastPerSubject, consume, last_per_subject
from services.common.streams import ProvisionError, provision

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

    The fast path sends without waiting (``publish_async``) and collects acks as they come.
    Anything that did not succeed there (no ack within ``ack_timeout``, a transient error, a
    disconnect) goes through :func:`publish` with its retries afterwards, which is safe because
    of the msg ids. Permanent failures do not stop the batch; a :class:`PublishBatchError`
    reports them at the end (publishing the whole batch again is safe).
    """
    queue = list(items)
    payloads = [_encode_for(o.subject, o.data) for o in queue]
    acks: list[PubAck | None] = [None] * len(queue)
    errors: dict[int, BaseException] = {}
    retry: list[int] = []
    window = max(1, window)
    inflight: dict[int, asyncio.Future[PubAck]] = {}
    # a plain counter (len(inflight)) and one future to wait on when the window is full: an
    # asyncio.Semaphore cost two coroutine calls and three locked() scans per message
    room: list[asyncio.Future[None]] = []
    loop = asyncio.get_running_loop()

    traced = tracing.enabled()  # once per batch: with tracing off a message needs no span

    def settle(i: int, span: Span | None, fut: asyncio.Future[PubAck]) -> None:
        inflight.pop(i, None)
        if room and not room[0].done():
            room[0].set_result(None)
        if fut.cancelled():
            retry.append(i)
        elif (exc := fut.exception()) is not None:
            (retry.append(i) if _is_transient(exc) else errors.__setitem__(i, exc))
            if span is not None:
                span.record_exception(exc)
        else:
            ack = acks[i] = fut.result()
            if span is not None:
                span.set_attribute(tracing.ATTR_STREAM, ack.stream)
                span.set_attribute(tracing.ATTR_STREAM_SEQUENCE, ack.seq)
        if span is not None:
            span.end()

    for i, o in enumerate(queue):
        if len(inflight) >= window:  # only then wait: an extra yield per message costs a syscall
            room[:] = [loop.create_future()]
            try:
                await asyncio.wait_for(room[0], ack_timeout)
            except TimeoutError:  # acks stopped coming (disconnect?): stragglers go to retry
                for fut in list(inflight.values()):
                    fut.cancel()
                await asyncio.sleep(0)  # their done callbacks run (settle: retry) before we go on
        span: Span | None = None
        if traced:
            span = tracing.start_producer_span(o.subject, o.msg_id, context=o.parent)
            hdrs = tracing.inject_span(o.headers, span)
        else:
            hdrs = dict(o.headers) if o.headers else {}
        hdrs[MSG_ID_HEADER] = o.msg_id
        try:
            fut = await js.publish_async(o.subject, payloads[i], headers=hdrs)
        except Exception:
            if span is not None:
                span.end()
            retry.append(i)
            continue
        inflight[i] = fut
        fut.add_done_callback(functools.partial(settle, i, span))
    if inflight:
        _, late = await asyncio.wait(list(inflight.values()), timeout=ack_timeout)
        for fut in late:
            fut.cancel()
        await asyncio.sleep(0)  # let the cancelled futures' callbacks run
    await _publish_each(js, queue, sorted(retry), acks, errors, ack_timeout, attempts)
    if errors:
        raise PublishBatchError(errors, acks)
    return [a for a in acks if a is not None]


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
