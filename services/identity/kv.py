"""The identity store behind a small compare-and-set interface: a NATS KV and an in-memory twin.

Why this shape: the allocator's safety rests on five primitives only: read a key with its
revision, create-only write, revision-checked update and delete, and counting the live keys under
a prefix. Keeping them behind :class:`IdentityKV` lets the allocation and GC protocol be read
without nats-py details, and :class:`MemoryKV` (same semantics, one dict) serves unit tests of
the protocol and fault injection. :class:`NatsKV` is the real store: bucket ``WEIR_IDENTITIES``.

Reference keys (``ref.<id>.<allocator>``) are removed with a subject purge on the bucket's stream,
not a KV delete, so no delete marker remains and :meth:`IdentityKV.count` can ask the server for
the live subjects under a prefix in one request.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple, Protocol

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects as s
from services.common.consume import ack_position, last_per_subject


class KVEntry(NamedTuple):
    key: str
    value: bytes
    revision: int


class IdentityKV(Protocol):
    async def get(self, key: str) -> KVEntry | None: ...

    async def create(self, key: str, value: bytes) -> int | None:
        """Write ``key`` only if it does not exist; its revision, or None if it exists."""

    async def update(self, key: str, value: bytes, last: int) -> int | None:
        """Write ``key`` only if its revision is ``last``; new revision or None."""

    async def delete(self, key: str, last: int) -> bool:
        """Delete ``key`` only if its revision is ``last``; False if it changed."""

    async def remove(self, key: str) -> None:
        """Remove ``key`` entirely (no marker left); unconditional, for keys one writer owns."""

    async def count(self, prefix: str) -> int:
        """How many live keys start with ``prefix`` (which ends with a ``.``)."""

    async def entries(self, prefix: str) -> list[KVEntry]:
        """Every live key under ``prefix`` with its value and revision."""


class MemoryKV:
    """In-memory :class:`IdentityKV` with the same create/CAS semantics as a NATS KV bucket."""

    def __init__(self) -> None:
        self._data: dict[str, KVEntry] = {}
        self._revision = 0
        self._lock = asyncio.Lock()

    def _next(self) -> int:
        self._revision += 1
        return self._revision

    async def get(self, key: str) -> KVEntry | None:
        return self._data.get(key)

    async def create(self, key: str, value: bytes) -> int | None:
        async with self._lock:
            if key in self._data:
                return None
            rev = self._next()
            self._data[key] = KVEntry(key, value, rev)
            return rev

    async def update(self, key: str, value: bytes, last: int) -> int | None:
        async with self._lock:
            cur = self._data.get(key)
            if cur is None or cur.revision != last:
                return None
            rev = self._next()
            self._data[key] = KVEntry(key, value, rev)
            return rev

    async def delete(self, key: str, last: int) -> bool:
        async with self._lock:
            cur = self._data.get(key)
            if cur is None or cur.revision != last:
                return False
            del self._data[key]
            self._next()
            return True

    async def remove(self, key: str) -> None:
        async with self._lock:
            self._data.pop(key, None)

    async def count(self, prefix: str) -> int:
        return sum(1 for k in self._data if k.startswith(prefix))

    async def entries(self, prefix: str) -> list[KVEntry]:
        return [e for k, e in sorted(self._data.items()) if k.startswith(prefix)]


class NatsKV:
    """:class:`IdentityKV` on a NATS JetStream KV bucket (default ``WEIR_IDENTITIES``)."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self._stream = f"KV_{bucket}"

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = s.KV_IDENTITIES) -> NatsKV:
        return cls(js, await js.key_value(bucket), bucket)

    def _subject(self, key: str) -> str:
        return f"$KV.{self._bucket}.{key}"

    async def get(self, key: str) -> KVEntry | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return KVEntry(key, entry.value or b"", int(entry.revision or 0))

    async def create(self, key: str, value: bytes) -> int | None:
        try:
            return int(await self._kv.create(key, value))
        except KeyWrongLastSequenceError:
            return None

    async def update(self, key: str, value: bytes, last: int) -> int | None:
        if last <= 0:
            raise ValueError(f"update {key}: revision must be positive, got {last}")
        try:
            return int(await self._kv.update(key, value, last=last))
        except KeyWrongLastSequenceError:
            return None

    async def delete(self, key: str, last: int) -> bool:
        if last <= 0:
            raise ValueError(f"delete {key}: revision must be positive, got {last}")
        try:
            await self._kv.delete(key, last=last)
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10071, 10164):  # wrong last sequence
                return False
            raise
        return True

    async def remove(self, key: str) -> None:
        await self._js.purge_stream(self._stream, subject=self._subject(key))

    async def count(self, prefix: str) -> int:
        info = await self._js.stream_info(self._stream, subjects_filter=self._subject(prefix) + ">")
        return len(info.state.subjects or {})

    async def entries(self, prefix: str) -> list[KVEntry]:
        """A last-per-subject snapshot of the bucket's stream, complete up to its last sequence.

        Not nats-py's KV ``watch``: its end-of-initial-values marker comes from the consumer's
        pending count read right after the consumer is created, and under load it came before
        any value (an empty listing of a bucket holding 1,000 keys)."""
        snap = await last_per_subject(self._js, self._stream, self._subject(prefix + ">"))
        found: dict[str, KVEntry] = {}
        for msg in snap.messages:
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                continue
            key = msg.subject.removeprefix(self._subject(""))
            found[key] = KVEntry(key, msg.data or b"", ack_position(msg)[0])
        return [found[k] for k in sorted(found)]
