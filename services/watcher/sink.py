"""Where decisions become messages: the JetStream sink, its in-memory twin, and stream read-back.

:class:`NatsSink` turns :mod:`.state` actions into contract messages: UPSERT/DELETE K8sEvents on
``weir.v1.k8s.<kind>.<ns>.<name>`` (deterministic ``Nats-Msg-Id`` from ``K8sEvent.msg_id()``) and
validation reports on ``weir.v1.errors.<kind>.<ns>.<name>``. Each publish runs inside a span
carrying the object and subject; the bus helper adds the PRODUCER span and trace headers below it.

A relist of 100k objects must not publish one message at a time, yet a re-created object's DELETE
must reach the stream before its new UPSERT. So large batches go out in two pipelined phases,
all DELETEs, then everything else: within a phase every subject occurs at most once, so the
pipeline cannot reorder anything that matters. A phase is one ``publish_batch`` (sends without
awaiting each ack, ``window`` in flight, retries through ``publish``), not a coroutine per
message: the per-message awaits were most of the list path's cost. The per-object span is only
built when tracing is on (a no-op tracer would still cost its attributes).

:func:`load_published` rebuilds the published-state index from the stream's last message per
subject: that is how a new leader (or a restarted watcher) learns what is already on the bus, so
its first relist publishes only real differences and the deletes that happened in between.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from contracts.subjects import STREAM_K8S, k8s_filter
from contracts.v1 import K8sEvent, Op, ValidationReport
from services.common import tracing
from services.common.bus import (
    Outgoing,
    PublishBatchError,
    PublishError,
    last_per_subject,
    publish,
    publish_batch,
)
from services.watcher import metrics
from services.watcher.observe import digest_of
from services.watcher.reflector import SinkError
from services.watcher.state import (
    Action,
    Delete,
    Fingerprint,
    ObjectKey,
    PublishedIndex,
    Report,
    Upsert,
    Valid,
)

log = logging.getLogger(__name__)

SEQUENTIAL_MAX = 8


def delete_event(action: Delete, producer: str, observed_at: datetime) -> K8sEvent:
    """The tombstone: the final object when it was valid, else identity fields only."""
    final = action.final
    if isinstance(final, Valid):
        event: K8sEvent = final.payload
        return event.model_copy(update={"op": Op.DELETE})
    rv = (
        final.resource_version if final is not None else ""
    ) or action.fingerprint.resource_version
    return K8sEvent(
        kind=action.key.kind,
        op=Op.DELETE,
        namespace=action.key.namespace,
        name=action.key.name,
        uid=action.fingerprint.uid,
        resource_version=rv,
        observed_at=observed_at,
        producer=producer,
        object=None,
    )


def report_message(action: Report, producer: str, observed_at: datetime) -> ValidationReport:
    inv = action.invalid
    return ValidationReport(
        kind=inv.key.kind,
        namespace=inv.key.namespace,
        name=inv.key.name or None,
        resource_version=inv.resource_version or None,
        field=inv.field,
        message=inv.message,
        producer=producer,
        observed_at=observed_at,
    )


def outgoing(
    action: Action, producer: str, observed_at: datetime
) -> tuple[str, BaseModel | bytes, str]:
    """(subject, message or its ready JSON, msg id) of one action."""
    if type(action) is Upsert:  # the bulk of a relist, without the pattern match's lookups
        event = action.payload
        return event.subject(), action.data or event, event.msg_id()
    match action:
        case Upsert(payload=event, data=data):
            return event.subject(), data or event, event.msg_id()
        case Delete():
            tomb = delete_event(action, producer, observed_at)
            return tomb.subject(), tomb, tomb.msg_id()
        case Report():
            rep = report_message(action, producer, observed_at)
            return rep.subject(), rep, rep.msg_id()
    raise TypeError(f"not an action: {action!r}")  # pragma: no cover


_OPS: dict[type, str] = {Upsert: "UPSERT", Delete: "DELETE", Report: "REPORT"}


def _op(action: Action) -> str:
    return _OPS[type(action)]


def _kind(action: Action) -> str:
    return action.invalid.key.kind if isinstance(action, Report) else action.key.kind


class NatsSink:
    """Publishes actions to JetStream (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        producer: str,
        *,
        window: int = 1024,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._js = js
        self._producer = producer
        self._window = window
        self._now = clock or (lambda: datetime.now(UTC))
        self._tracer = trace.get_tracer("weir.watcher")

    async def send(self, actions: Sequence[Action]) -> Sequence[Action]:
        if len(actions) <= SEQUENTIAL_MAX:
            done: list[Action] = []
            for action in actions:
                try:
                    await self._publish(action)
                except PublishError as exc:
                    raise SinkError(str(exc), done) from exc
                done.append(action)
            return done
        deletes: list[Action] = [a for a in actions if isinstance(a, Delete)]
        rest: list[Action] = [a for a in actions if not isinstance(a, Delete)]
        accepted = await self._pipeline(deletes, [])
        return await self._pipeline(rest, accepted)

    async def _pipeline(self, actions: list[Action], accepted: list[Action]) -> list[Action]:
        if not actions:
            return accepted
        traced = tracing.enabled()
        items: list[Outgoing] = []
        spans = []
        now = self._now()  # one observation time for the tombstones and reports of a batch
        for action in actions:
            subject, message, msg_id = outgoing(action, self._producer, now)
            parent = None
            if traced:
                span = self._tracer.start_span(
                    f"watcher {_op(action)}", attributes=self._attributes(action, subject)
                )
                spans.append(span)
                parent = trace.set_span_in_context(span)
            items.append(Outgoing(subject, message, msg_id, parent=parent))
        failed: dict[int, BaseException] = {}
        try:
            await publish_batch(self._js, items, window=self._window)
        except PublishBatchError as exc:
            failed = exc.errors
        finally:
            for span in spans:
                span.end()
        good = [a for i, a in enumerate(actions) if i not in failed]
        for (kind, op), n in Counter((_kind(a), _op(a)) for a in good).items():
            metrics.PUBLISHED.labels(kind, op).inc(n)
        accepted = accepted + good
        if failed:
            first = failed[min(failed)]
            raise SinkError(f"{len(failed)} publishes failed; first: {first}", accepted)
        return accepted

    @staticmethod
    def _attributes(action: Action, subject: str) -> dict[str, Any]:
        key = action.invalid.key if isinstance(action, Report) else action.key
        return {
            "weir.object": str(key),
            "weir.op": _op(action),
            "messaging.destination.name": subject,
        }

    async def _publish(self, action: Action) -> None:
        subject, message, msg_id = outgoing(action, self._producer, self._now())
        if not tracing.enabled():
            await publish(self._js, subject, message, msg_id=msg_id)
        else:
            attributes = self._attributes(action, subject)
            with self._tracer.start_as_current_span(
                f"watcher {_op(action)}", attributes=attributes
            ):
                await publish(self._js, subject, message, msg_id=msg_id)
        metrics.PUBLISHED.labels(_kind(action), _op(action)).inc()


class MemorySink:
    """The in-memory twin: records actions (and can be told to fail after ``fail_after``)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[Action] = []
        self.fail_after = fail_after

    async def send(self, actions: Sequence[Action]) -> Sequence[Action]:
        done: list[Action] = []
        for action in actions:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise SinkError("memory sink: configured to fail", done)
            self.sent.append(action)
            done.append(action)
        return done


async def load_published(js: JetStreamContext, index: PublishedIndex) -> int:
    """Seed ``index`` from the last K8sEvent per subject on the stream; returns objects seeded."""
    snapshot = await last_per_subject(js, STREAM_K8S, k8s_filter())
    seeded = 0
    for msg in snapshot.messages:
        try:
            event = K8sEvent.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning(
                "stream %s: unreadable event on %s skipped: %s", STREAM_K8S, msg.subject, exc
            )
            continue
        if event.op is Op.UPSERT:
            key = ObjectKey(event.kind, event.namespace, event.name)
            index.seed(key, Fingerprint(event.uid, event.resource_version, digest_of(event)))
            seeded += 1
    return seeded
