"""Consuming from JetStream: a durable pull loop that acks after effect, and a state snapshot.

Why this shape:
- :func:`consume` acks a message only after ``await handler(msg)`` returned, so a crash or an
  error never loses a message (at-least-once; handlers are idempotent because the bus carries
  desired state, not deltas). A failing message is nak'ed with a growing delay and, after
  ``max_deliver`` deliveries, terminated and counted: one poison message must not block a node.
  The decision is the pure :func:`failure_action`.
- :func:`last_per_subject` is how a node bootstraps: the latest message of every subject
  (tombstones included: helpers never interpret payloads) plus the stream sequence the snapshot
  is consistent with, so the caller can continue with a consumer from ``sequence + 1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from services.common import metrics, tracing
from services.common.cancelling import raise_if_cancelled

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]


class FailureAction(NamedTuple):
    """What to do with a message whose handler failed: ``nak`` after ``delay`` or ``term``."""

    verb: str
    delay: float


def failure_action(
    num_delivered: int, *, max_deliver: int, base_delay: float, max_delay: float
) -> FailureAction:
    """Pure redelivery policy: exponential nak delay, terminate on the last allowed delivery."""
    if max_deliver > 0 and num_delivered >= max_deliver:
        return FailureAction("term", 0.0)
    return FailureAction("nak", min(max_delay, base_delay * 2 ** max(0, num_delivered - 1)))


@dataclass(frozen=True)
class DurableSpec:
    """The durable pull consumer :func:`consume` creates (or updates) and binds to."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait: float = 30.0
    max_ack_pending: int = 1024
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    opt_start_seq: int | None = None
    # ALL: one ack covers every earlier message of the consumer (batch consumers that apply a
    # whole fetch at once ack only its last message); EXPLICIT: one ack per message
    ack_policy: AckPolicy = AckPolicy.EXPLICIT

    def config(self) -> ConsumerConfig:
        cfg = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=self.ack_policy,
            ack_wait=self.ack_wait,
            max_deliver=-1,  # we terminate explicitly (and count it) in failure_action
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
            opt_start_seq=self.opt_start_seq,
        )
        if len(self.filter_subjects) == 1:
            cfg.filter_subject = self.filter_subjects[0]
        elif self.filter_subjects:
            cfg.filter_subjects = list(self.filter_subjects)
        return cfg


async def _handle(
    msg: Msg,
    handler: Handler,
    labels: tuple[str, str],
    *,
    max_deliver: int,
    nak_delay: float,
    max_nak_delay: float,
) -> None:
    metrics.MESSAGES_CONSUMED.labels(*labels).inc()
    start = time.perf_counter()
    with tracing.consumer_span(msg) as span:
        try:
            await handler(msg)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()  # hand it back at once instead of after ack_wait
            raise
        except Exception as exc:
            metrics.HANDLER_DURATION.labels(*labels).observe(time.perf_counter() - start)
            span.record_exception(exc)
            delivered = msg.metadata.num_delivered
            action = failure_action(
                delivered, max_deliver=max_deliver, base_delay=nak_delay, max_delay=max_nak_delay
            )
            if action.verb == "term":
                metrics.MESSAGES_TERMED.labels(*labels).inc()
                log.error(
                    "%s/%s: giving up on %s (stream seq %d) after %d deliveries: %r",
                    *labels,
                    msg.subject,
                    msg.metadata.sequence.stream,
                    delivered,
                    exc,
                )
                await msg.term()
            else:
                metrics.MESSAGES_NAKED.labels(*labels).inc()
                log.warning(
                    "%s/%s: handler failed on %s (delivery %d), retry in %.2fs: %r",
                    *labels,
                    msg.subject,
                    delivered,
                    action.delay,
                    exc,
                )
                await msg.nak(delay=action.delay)
            return
        metrics.HANDLER_DURATION.labels(*labels).observe(time.perf_counter() - start)
        await msg.ack()
        metrics.MESSAGES_ACKED.labels(*labels).inc()


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subjects: Sequence[str],
    handler: Handler,
    batch: int = 256,
    fetch_timeout: float = 1.0,
    ack_wait: float = 30.0,
    max_deliver: int = 5,
    nak_delay: float = 0.2,
    max_nak_delay: float = 10.0,
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    opt_start_seq: int | None = None,
) -> None:
    """Run a durable pull consumer until cancelled, handling messages one by one in order.

    ``deliver_policy``/``opt_start_seq`` only matter when the durable is first created (e.g.
    ``DeliverPolicy.BY_START_SEQUENCE`` from a :func:`last_per_subject` snapshot).
    """
    labels = (stream, durable)
    spec = DurableSpec(
        stream=stream,
        durable=durable,
        filter_subjects=tuple(filter_subjects),
        ack_wait=ack_wait,
        max_ack_pending=max(batch * 4, 1024),
        deliver_policy=deliver_policy,
        opt_start_seq=opt_start_seq,
    )
    await js.add_consumer(stream, spec.config())
    psub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    log.info("consuming %s/%s %s", stream, durable, ",".join(filter_subjects))
    try:
        while True:
            raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
            try:
                msgs = await psub.fetch(batch, timeout=fetch_timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except NotFoundError:
                log.warning("%s/%s: consumer vanished; recreating", stream, durable)
                await _recreate(js, spec)
                continue
            except (nats.errors.Error, OSError) as exc:
                log.warning("%s/%s: fetch failed (%r); retrying", stream, durable, exc)
                await asyncio.sleep(0.2)
                continue
            for i, msg in enumerate(msgs):
                try:
                    await _handle(
                        msg,
                        handler,
                        labels,
                        max_deliver=max_deliver,
                        nak_delay=nak_delay,
                        max_nak_delay=max_nak_delay,
                    )
                except asyncio.CancelledError:
                    # Fetched but never handled: hand back now, not after ack_wait.
                    for rest in msgs[i + 1 :]:
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    raise
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


async def _recreate(js: JetStreamContext, spec: DurableSpec) -> None:
    try:
        await js.add_consumer(spec.stream, spec.config())
    except Exception as exc:  # the server may still be coming back
        log.warning("%s/%s: cannot recreate consumer yet: %r", spec.stream, spec.durable, exc)
        await asyncio.sleep(0.5)


class LastPerSubject(NamedTuple):
    """The latest message of each subject, in stream order, and the sequence it reflects."""

    messages: list[Msg]
    sequence: int


async def last_per_subject(
    js: JetStreamContext,
    stream: str,
    filter_subject: str,
    *,
    idle_timeout: float = 5.0,
    attempts: int = 3,
    on_message: Callable[[Msg], object] | None = None,
) -> LastPerSubject:
    """Snapshot: every subject's latest message under ``filter_subject`` (see module doc).

    With ``on_message`` every message is handed to it as it arrives instead of being kept
    (``messages`` is then empty): a caller that decodes the snapshot never holds all raw
    messages at once (~50 MB at 10,000 Services, and the peak RSS of a cold datapath worker).
    After a reset the newer copy of a subject may follow an older one: the callback must
    keep the newest per subject (by stream sequence), as the kept list does.

    ``sequence`` is at least the stream's last sequence when the call started; every message
    up to it that is the newest of its subject is in ``messages``. Messages published while
    the snapshot is read may be included too (``sequence`` then covers them). An ordered push
    consumer delivers without a round trip per batch; should it reset (a gap after a
    reconnect) it re-delivers from the gap on, and keeping the newest message per subject makes
    the result the same.
    """
    last_exc: BaseException | None = None
    for _ in range(attempts):
        try:
            return await _snapshot_once(js, stream, filter_subject, idle_timeout, on_message)
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
            last_exc = exc
            log.warning(
                "snapshot of %s %s interrupted (%r); restarting", stream, filter_subject, exc
            )
    raise RuntimeError(f"snapshot of {stream} {filter_subject} failed: {last_exc!r}")


def ack_position(msg: Msg) -> tuple[int, int]:
    """(stream sequence, messages pending) of a JetStream message, read straight from its ack
    subject ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.
    <pending>``. ``Msg.metadata`` parses the same subject but also builds a datetime and two
    dataclasses, ~3 % of a cold worker's snapshot of 20,000 messages. Any other form (the
    domain-qualified v2 subject, no reply) goes through ``Msg.metadata``."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        with contextlib.suppress(ValueError):
            return int(tokens[5]), int(tokens[8])
    meta = msg.metadata
    return meta.sequence.stream, meta.num_pending


async def _snapshot_once(
    js: JetStreamContext,
    stream: str,
    filter_subject: str,
    idle_timeout: float,
    on_message: Callable[[Msg], object] | None = None,
) -> LastPerSubject:
    start_seq = (await js.stream_info(stream)).state.last_seq
    latest: dict[str, tuple[int, Msg]] = {}
    top = 0
    done = asyncio.Event()
    progress = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        nonlocal top
        seq, pending = ack_position(msg)
        if on_message is None:
            latest[msg.subject] = (seq, msg)
        else:
            on_message(msg)
        top = max(top, seq)
        progress.set()
        if not pending:
            done.set()

    sub = await js.subscribe(
        filter_subject,
        stream=stream,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=30.0,
    )
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            done.set()  # nothing matched when the consumer was created
        while not done.is_set():
            progress.clear()  # on_msg sets progress together with done: no lost wake-up
            await asyncio.wait_for(progress.wait(), idle_timeout)
    finally:
        with contextlib.suppress(Exception):
            name = (await sub.consumer_info()).name  # the current one, after any reset
            await sub.unsubscribe()
            await js.delete_consumer(stream, name)
    ordered = [msg for _, msg in sorted(latest.values(), key=lambda item: item[0])]
    return LastPerSubject(ordered, max(start_seq, top))
