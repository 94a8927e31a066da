"""The bus side of ``weir replay``: read stream history in order, pick the window, republish.

Why this shape: the state at the start of a window depends on everything before it, so the
history is always read from the oldest retained message (an ordered consumer with
``DeliverPolicy.BY_START_SEQUENCE`` at the stream's first sequence) up to the upper bound, and
``--from-seq``/``--since`` only choose which changes are *shown* (:class:`Window`, pure). With
16 messages kept per subject the newest state of every object is always there; only the early
history of busy subjects can be cut short. WEIR_K8S and WEIR_IDENTITY have separate sequence
numbers, so they are merged by the server's store time (K8s first on a tie): an identity
follows the pod event that caused it. Republishing goes to a core-NATS debug subject outside
every stream, so replayed messages can never re-enter the desired state.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts.subjects import PREFIX, STREAM_IDENTITY, STREAM_K8S, STREAM_SUBJECTS
from services.ops.replay_model import Record, subject_matches

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class ReplayInputError(ValueError):
    """A bad option value; the message names the option."""


def parse_time(text: str, option: str, now: datetime) -> datetime:
    """ISO 8601 (naive means UTC), unix seconds, or a duration ago (``90s``, ``5m``, ``2h``)."""
    value = text.strip()
    if m := _DURATION.match(value):
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayInputError(
            f"{option}: {text!r} is not an ISO 8601 time, unix seconds or a duration like 5m"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_republish(prefix: str) -> str:
    """A debug subject prefix that no Weir stream captures."""
    tokens = prefix.split(".")
    if not prefix or not all(_TOKEN.match(t) for t in tokens):
        raise ReplayInputError(f"--republish: {prefix!r} must be dot-separated plain tokens")
    probe = f"{prefix}.k8s.service.default.x"
    for stream, filters in STREAM_SUBJECTS.items():
        if (
            prefix == PREFIX
            or prefix.startswith(f"{PREFIX}.")
            or any(subject_matches(f, probe) for f in filters)
        ):
            raise ReplayInputError(
                f"--republish: {prefix!r} lies inside the bus layout (stream {stream}); "
                "use a debug subject such as weir.debug.replay"
            )
    return prefix


def republish_subject(prefix: str, subject: str) -> str:
    """``<prefix>.<original subject without weir.v1.>``."""
    return f"{prefix}.{subject.removeprefix(f'{PREFIX}.')}"


@dataclass(frozen=True)
class Window:
    """Which records are shown: K8s sequence and/or time bounds, and a subject filter."""

    from_seq: int = 0
    to_seq: int = 0  # 0: no bound
    since: datetime | None = None
    until: datetime | None = None
    subject: str = ""

    def stop_after(self, rec: Record) -> bool:
        """Records past the upper bound are not even fed."""
        if self.until is not None and rec.time > self.until:
            return True
        return bool(self.to_seq and rec.stream == STREAM_K8S and rec.seq > self.to_seq)

    def shows(self, rec: Record, first_k8s_time: datetime | None) -> bool:
        if self.subject and not subject_matches(self.subject, rec.subject):
            return False
        if self.since is not None and rec.time < self.since:
            return False
        if self.from_seq:
            if rec.stream == STREAM_K8S:
                return rec.seq >= self.from_seq
            return first_k8s_time is not None and rec.time >= first_k8s_time
        return True


async def read_stream(
    js: JetStreamContext, stream: str, filter_subject: str, *, idle_timeout: float = 5.0
) -> list[Record]:
    """Every retained message of ``stream`` under ``filter_subject`` up to its current end."""
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    if not last or info.state.messages == 0:
        return []
    out: list[Record] = []
    done = asyncio.Event()
    progress = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        meta = msg.metadata
        out.append(_record(msg))
        progress.set()
        if meta.sequence.stream >= last or not meta.num_pending:
            done.set()

    sub = await js.subscribe(
        filter_subject,
        stream=stream,
        cb=on_msg,
        ordered_consumer=True,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, first)
        ),
        inactive_threshold=30.0,
    )
    try:
        info_c = await sub.consumer_info()
        if not info_c.num_pending and not out:
            return []
        while not done.is_set():
            progress.clear()
            await asyncio.wait_for(progress.wait(), idle_timeout)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return [r for r in out if r.seq <= last]


def _record(msg: Msg) -> Record:
    meta = msg.metadata
    ts = meta.timestamp
    when = ts if isinstance(ts, datetime) else datetime.now(UTC)
    return Record(
        stream=meta.stream,
        seq=meta.sequence.stream,
        subject=msg.subject,
        time=when if when.tzinfo else when.replace(tzinfo=UTC),
        data=bytes(msg.data),
        headers=dict(msg.headers or {}),
    )


def merge(k8s: Sequence[Record], identity: Sequence[Record]) -> list[Record]:
    """One history: by store time, WEIR_K8S before WEIR_IDENTITY on a tie, then sequence."""
    rank = {STREAM_K8S: 0, STREAM_IDENTITY: 1}
    return sorted([*k8s, *identity], key=lambda r: (r.time, rank.get(r.stream, 2), r.seq))


async def read_history(js: JetStreamContext, *, identities: bool = True) -> list[Record]:
    k8s = await read_stream(js, STREAM_K8S, f"{PREFIX}.k8s.>")
    ids: list[Record] = []
    if identities:
        for filt in STREAM_SUBJECTS[STREAM_IDENTITY]:
            ids += await read_stream(js, STREAM_IDENTITY, filt)
    return merge(k8s, ids)


async def republish(nc: NATS, prefix: str, records: Sequence[Record]) -> int:
    """Publish each record on ``<prefix>.<suffix>`` (core NATS) with its headers and origin."""
    for rec in records:
        headers = {k: v for k, v in rec.headers.items() if k != "Nats-Msg-Id"}
        headers |= {"Weir-Replay-Stream": rec.stream, "Weir-Replay-Seq": str(rec.seq)}
        await nc.publish(republish_subject(prefix, rec.subject), rec.data, headers=headers)
    await nc.flush()
    return len(records)
