"""Reading the bus for the inspect commands: one short-lived connection, read-only queries.

Why a separate connect: services connect with :func:`services.common.bus.connect_bus`, which
retries for ever (a service must survive a NATS restart). An operator command must instead fail
at once with a message that says what to do, so it connects once, without reconnects, with a
short timeout. Everything here only reads: snapshots (last message per subject, through the
shared :func:`last_per_subject`), stream states, the newest messages of a stream and the identity
KV. Messages that do not decode are returned as problems naming the subject and the field,
never raised, so one bad message cannot hide the rest of the picture.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from pydantic import BaseModel, ValidationError

from services.common.bus import last_per_subject
from services.identity.kv import KVEntry, NatsKV
from services.ops.output import OpsError

M = TypeVar("M", bound=BaseModel)

HINT = "start a sandbox with `weir sandbox up` or pass --nats URL (or set WEIR_NATS_URL)"


@dataclass(frozen=True)
class StreamState:
    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: int


@dataclass
class Reader:
    """An open, read-only view of the bus."""

    nc: NATS
    js: JetStreamContext
    url: str

    async def stream(self, name: str) -> StreamState | None:
        try:
            info = await self.js.stream_info(name)
        except NotFoundError:
            return None
        st = info.state
        return StreamState(
            name=name,
            messages=int(st.messages or 0),
            bytes=int(st.bytes or 0),
            first_seq=int(st.first_seq or 0),
            last_seq=int(st.last_seq or 0),
            consumers=int(st.consumer_count or 0),
        )

    async def streams(self, names: Sequence[str]) -> list[StreamState]:
        """States of the streams that exist, in the order asked."""
        out = []
        for name in names:
            state = await self.stream(name)
            if state is not None:
                out.append(state)
        return out

    async def last_seq(self, stream: str, subjects: Sequence[str]) -> int:
        """Sequence of the newest message matching any of ``subjects`` (0 when none)."""
        best = 0
        for subject in subjects:
            with contextlib.suppress(NotFoundError):
                best = max(best, int((await self.js.get_last_msg(stream, subject)).seq or 0))
        return best

    async def latest(
        self, stream: str, subject_filter: str, model: type[M]
    ) -> tuple[list[tuple[str, M]], list[str]]:
        """The newest message of every subject under ``subject_filter``, decoded as ``model``:
        ((subject, message) in stream order, problems)."""
        if await self.stream(stream) is None:
            return [], [f"stream {stream} does not exist (nothing published yet?)"]
        snap = await last_per_subject(self.js, stream, subject_filter)
        out: list[tuple[str, M]] = []
        problems: list[str] = []
        for msg in snap.messages:
            decoded = decode(msg.subject, msg.data, model)
            if isinstance(decoded, str):
                problems.append(decoded)
            else:
                out.append((msg.subject, decoded))
        return out, problems

    async def newest(
        self, stream: str, count: int, model: type[M]
    ) -> tuple[list[tuple[str, M]], list[str]]:
        """Up to ``count`` newest messages of ``stream`` (newest first), decoded as ``model``."""
        state = await self.stream(stream)
        out: list[tuple[str, M]] = []
        problems: list[str] = []
        if state is None or count <= 0:
            return out, problems
        seq = state.last_seq
        while seq >= max(1, state.first_seq) and len(out) < count:
            try:
                raw = await self.js.get_msg(stream, seq)
            except NotFoundError:  # purged or deleted in between
                seq -= 1
                continue
            decoded = decode(str(raw.subject), raw.data or b"", model)
            if isinstance(decoded, str):
                problems.append(decoded)
            else:
                out.append((str(raw.subject), decoded))
            seq -= 1
        return out, problems

    async def kv_entries(self, bucket: str) -> list[KVEntry]:
        """Every live key of a KV bucket; OpsError if the bucket does not exist."""
        try:
            kv = await NatsKV.open(self.js, bucket)
        except BucketNotFoundError:
            raise OpsError(
                f"KV bucket {bucket} does not exist on {self.url}: is `weir identity` running?"
            ) from None
        return await kv.entries("")


def decode(subject: str, data: bytes, model: type[M]) -> M | str:
    """A message as ``model``, or a problem line naming the subject and the failing field."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "message"
        return f"{subject}: not a valid {model.__name__}: {where}: {err.get('msg', exc)}"
    except (ValueError, json.JSONDecodeError) as exc:
        return f"{subject}: not a valid {model.__name__}: {exc}"


@contextlib.asynccontextmanager
async def open_reader(url: str, *, connect_timeout: float = 3.0) -> AsyncIterator[Reader]:
    """Connect once (no reconnects) or raise OpsError saying how to get a NATS to talk to."""

    async def quiet(_exc: Exception) -> None:  # the failure is reported below, once
        return None

    try:
        # nats-py retries refused connections inside its server selection unless
        # max_reconnect_attempts is positive: 1 means two quick tries, then NoServersError.
        nc = await nats.connect(
            url,
            name="weir-inspect",
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            connect_timeout=connect_timeout,
            error_cb=quiet,
        )
    except (OSError, ValueError, nats.errors.Error, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, nats.errors.NoServersError):
            reason = "connection refused or timed out"
        raise OpsError(f"cannot reach NATS at {url} ({reason}): {HINT}") from None
    try:
        yield Reader(nc=nc, js=nc.jetstream(timeout=connect_timeout), url=url)
    except (nats.errors.Error, TimeoutError) as exc:
        raise OpsError(f"NATS at {url}: {type(exc).__name__}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def as_dict(model: BaseModel) -> dict[str, Any]:
    """A model as plain JSON data (datetimes as ISO strings)."""
    return json.loads(model.model_dump_json())  # type: ignore[no-any-return]
