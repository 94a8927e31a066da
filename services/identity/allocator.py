"""Numeric identity allocation over a compare-and-set KV, with reference counting and safe GC.

Why this protocol (keys in bucket ``WEIR_IDENTITIES``):

- ``id.<n>`` -> canonical labels and ``labels.<sha256>`` -> ``n`` are both written create-only.
  To allocate, an allocator claims a free ``id.<n>`` (losing that race just means the next
  candidate), then creates ``labels.<hash>``; if another allocator created it first, the claimed
  id is released with a revision-checked delete and the winner's id is used. ``id.<n>`` is never
  rewritten, so one number can never name two label sets, and ``labels.<hash>`` is unique per set.
- Every allocator that uses ``n`` holds ``ref.<n>.<allocator>``. It keeps that key for the GC grace
  period after its last local endpoint went away, so "no ref key left" means every allocator has
  had the identity unused for at least the grace period.
- GC is a write-then-read handshake against acquisition (both in one stream, so linearizable):
  the collector first marks ``labels.<hash>`` dying (revision-checked update), then counts ref
  keys; an acquirer first creates its ref key, then re-reads ``labels.<hash>``. Either the
  collector sees the ref (and restores the mapping) or the acquirer sees the mark (drops its ref
  and retries); both cannot miss each other. The labels key goes before the id key, so a number is
  free again only after nothing maps to it. A mark older than ``dying_timeout`` (a collector that
  died halfway) is reverted by the next acquirer; a slow collector then fails its checked delete.

The in-memory cache (hash <-> id) is rebuilt from the KV at start, which is why identities are
stable across restarts; it is only trusted without a KV round trip while this allocator holds a
ref key for the id. Known limitation: ids claimed by an allocator that crashed between its two
creates stay claimed (orphaned ``id.<n>``), and ref keys of an allocator instance that never
comes back keep their ids alive; both only waste numbers, never duplicate one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from contracts.subjects import escape_token
from services.identity import metrics
from services.identity.kv import IdentityKV, KVEntry
from services.identity.labels import LabelSet
from services.identity.reserved import MAX_CLUSTER_ID, MIN_CLUSTER_ID, candidates, check_range

log = logging.getLogger(__name__)

DYING = "gc:"


class ExhaustedError(RuntimeError):
    """Every identity of the configured range is allocated."""


class AllocationError(RuntimeError):
    """Allocation did not converge (the KV kept changing under us); the caller should retry."""


@dataclass(frozen=True)
class Collected:
    """An identity :meth:`Allocator.gc` deleted from the KV."""

    identity: int
    incarnation: int
    digest: str


@dataclass(frozen=True)
class Acquired:
    """Result of :meth:`Allocator.acquire` for one endpoint."""

    identity: int
    incarnation: int  # revision of id.<n>: distinguishes a re-used number
    first: bool  # the first local endpoint with this identity (publish the Identity)
    previous: int | None  # the endpoint's identity before, if it changed


def labels_key(digest: str) -> str:
    return f"labels.{digest}"


def id_key(ident: int) -> str:
    return f"id.{ident}"


def parse_mapping(value: bytes) -> tuple[int, float | None]:
    """``labels.<hash>`` value -> (id, dying-since unix time or None); ValueError if garbage."""
    text = value.decode()
    if text.startswith(DYING):
        ident, _, since = text[len(DYING) :].partition(":")
        return int(ident), float(since)
    return int(text), None


class Allocator:
    """Allocates identities for label sets and reference-counts them per endpoint (pod uid)."""

    def __init__(
        self,
        kv: IdentityKV,
        *,
        instance: str,
        low: int = MIN_CLUSTER_ID,
        high: int = MAX_CLUSTER_ID,
        gc_grace: float = 30.0,
        dying_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.kv = kv
        self.instance = escape_token(instance)
        self.low, self.high = check_range(low, high)
        self.gc_grace = gc_grace
        self.dying_timeout = dying_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._by_hash: dict[str, int] = {}
        self._by_id: dict[int, str | None] = {}  # id -> label digest (None: unreadable)
        self._incarnation: dict[int, int] = {}
        self._held: set[int] = set()  # ids whose ref.<n>.<instance> key exists
        self._endpoints: dict[str, int] = {}
        self._users: dict[int, set[str]] = {}
        self._unused_since: dict[int, float] = {}
        self._lock = asyncio.Lock()

    def _ref_key(self, ident: int) -> str:
        return f"ref.{ident}.{self.instance}"

    # ---- start-up -------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the cache from the KV; ids this instance still holds start their grace now."""
        async with self._lock:
            await self._reload()
            suffix = f".{self.instance}"
            now = self._clock()
            for entry in await self.kv.entries("ref."):
                if entry.key.endswith(suffix):
                    ident = int(entry.key.split(".")[1])
                    self._held.add(ident)
                    if not self._users.get(ident):
                        self._unused_since[ident] = now
            metrics.IDENTITIES.set(len(self._by_id))

    async def _reload(self) -> None:
        by_id: dict[int, str | None] = {}
        incarnation: dict[int, int] = {}
        for entry in await self.kv.entries("id."):
            ident = int(entry.key.split(".", 1)[1])
            incarnation[ident] = entry.revision
            try:
                by_id[ident] = LabelSet.from_canonical(entry.value).digest
            except ValueError:
                log.error("KV %s: unreadable label set; id stays reserved", entry.key)
                by_id[ident] = None
        by_hash: dict[str, int] = {}
        for entry in await self.kv.entries("labels."):
            try:
                ident, _dying = parse_mapping(entry.value)
            except ValueError:
                log.error("KV %s: unreadable value %r", entry.key, entry.value[:40])
                continue
            by_hash[entry.key.split(".", 1)[1]] = ident
        self._by_id, self._incarnation, self._by_hash = by_id, incarnation, by_hash

    # ---- queries --------------------------------------------------------------------------

    def identity_of(self, endpoint: str) -> int | None:
        return self._endpoints.get(endpoint)

    def users(self, ident: int) -> int:
        return len(self._users.get(ident, ()))

    def known(self) -> dict[int, str | None]:
        """id -> label digest of every identity this allocator knows about."""
        return dict(self._by_id)

    # ---- acquire / release ----------------------------------------------------------------

    async def acquire(self, endpoint: str, labels: LabelSet) -> Acquired:
        """Give ``endpoint`` the identity of ``labels`` (allocating it if needed)."""
        async with self._lock:
            ident = await self._resolve(labels)
            prev = self._endpoints.get(endpoint)
            if prev == ident:
                return Acquired(ident, self._incarnation.get(ident, 0), False, None)
            users = self._users.setdefault(ident, set())
            first = not users
            users.add(endpoint)
            self._endpoints[endpoint] = ident
            self._unused_since.pop(ident, None)
            if prev is not None:
                self._drop(endpoint, prev)
            return Acquired(ident, self._incarnation.get(ident, 0), first, prev)

    async def release(self, endpoint: str) -> int | None:
        """Forget ``endpoint``; returns the identity it held (GC may collect it after grace)."""
        async with self._lock:
            ident = self._endpoints.pop(endpoint, None)
            if ident is not None:
                self._drop(endpoint, ident)
            return ident

    def _drop(self, endpoint: str, ident: int) -> None:
        users = self._users.get(ident)
        if users is not None:
            users.discard(endpoint)
            if not users:
                del self._users[ident]
                self._unused_since[ident] = self._clock()

    async def lookup_or_allocate(self, labels: LabelSet) -> int:
        """The identity of ``labels`` without taking a local reference (holds a KV ref)."""
        async with self._lock:
            ident = await self._resolve(labels)
            if not self._users.get(ident):
                self._unused_since.setdefault(ident, self._clock())
            return ident

    async def _resolve(self, labels: LabelSet) -> int:
        digest = labels.digest
        cached = self._by_hash.get(digest)
        if cached is not None and cached in self._held:
            return cached
        for _ in range(64):
            entry = await self.kv.get(labels_key(digest))
            if entry is None:
                ident = await self._allocate(labels)
                if ident is None:
                    continue
            else:
                ident, dying = parse_mapping(entry.value)
                if dying is not None:
                    await self._wait_dying(entry, ident, dying)
                    continue
            if await self._hold(ident, digest):
                metrics.ALLOCATIONS.labels("resolved").inc()
                return ident
        raise AllocationError(f"labels {digest[:12]}: no stable identity after 64 attempts")

    async def _hold(self, ident: int, digest: str) -> bool:
        """Create our ref key for ``ident``, then check the mapping still stands (see module)."""
        if ident not in self._held:
            await self.kv.create(self._ref_key(ident), b"")
            self._held.add(ident)
        check = await self.kv.get(labels_key(digest))
        if check is not None and parse_mapping(check.value) == (ident, None):
            self._by_hash[digest] = ident
            if ident not in self._incarnation or self._by_id.get(ident) != digest:
                id_entry = await self.kv.get(id_key(ident))
                if id_entry is None:  # cannot happen while labels maps to it; retry anyway
                    return False
                self._incarnation[ident] = id_entry.revision
                self._by_id[ident] = digest
            return True
        if not self._users.get(ident):
            await self.kv.remove(self._ref_key(ident))
            self._held.discard(ident)
        await asyncio.sleep(0.01 * self._rng.random())
        return False

    async def _wait_dying(self, entry: KVEntry, ident: int, since: float) -> None:
        if time.time() - since > self.dying_timeout:
            if await self.kv.update(entry.key, str(ident).encode(), last=entry.revision):
                log.warning("reverted stale GC mark on %s (id %d)", entry.key, ident)
            return
        await asyncio.sleep(0.02)

    async def _allocate(self, labels: LabelSet) -> int | None:
        """Claim a new id for ``labels``; None when the labels key changed under us."""
        digest = labels.digest
        canonical = labels.canonical.encode()
        for attempt in range(2):
            for cand in candidates(self.low, self.high, self._by_id, self._rng):
                rev = await self.kv.create(id_key(cand), canonical)
                if rev is None:
                    metrics.ALLOCATIONS.labels("id_taken").inc()
                    self._by_id[cand] = None
                    continue
                if await self.kv.create(labels_key(digest), str(cand).encode()) is not None:
                    self._by_id[cand] = digest
                    self._incarnation[cand] = rev
                    metrics.ALLOCATIONS.labels("new").inc()
                    metrics.IDENTITIES.set(len(self._by_id))
                    log.info("allocated identity %d for %s", cand, labels.labels)
                    return cand
                metrics.ALLOCATIONS.labels("labels_lost").inc()
                await self.kv.delete(id_key(cand), last=rev)
                return None
            if attempt == 0:
                await self._reload()  # other allocators may have freed ids since we looked
        metrics.EXHAUSTED.inc()
        size = self.high - self.low + 1
        raise ExhaustedError(
            f"identity range {self.low}..{self.high} is exhausted: all {size} identities are"
            f" allocated; cannot allocate one for {len(labels.labels)} labels ({digest[:12]})"
        )

    # ---- garbage collection ---------------------------------------------------------------

    def due(self) -> list[int]:
        """Ids whose local grace period is over (pure look at the in-memory state)."""
        now = self._clock()
        return sorted(i for i, t in self._unused_since.items() if now - t >= self.gc_grace)

    async def gc(self) -> list[Collected]:
        """Release ids unused for the grace period; returns the ids deleted from the KV."""
        collected: list[Collected] = []
        async with self._lock:
            for ident in self.due():
                del self._unused_since[ident]
                if ident in self._held:
                    await self.kv.remove(self._ref_key(ident))
                    self._held.discard(ident)
                done = await self._collect(ident)
                if done is not None:
                    collected.append(done)
        if collected:
            metrics.GC_COLLECTED.inc(len(collected))
            metrics.IDENTITIES.set(len(self._by_id))
        return collected

    async def _collect(self, ident: int) -> Collected | None:
        id_entry = await self.kv.get(id_key(ident))
        if id_entry is None:
            self._forget(ident)
            return None
        try:
            digest = LabelSet.from_canonical(id_entry.value).digest
        except ValueError:
            return None
        entry = await self.kv.get(labels_key(digest))
        if entry is None or parse_mapping(entry.value) != (ident, None):
            return None
        mark = f"{DYING}{ident}:{time.time():.3f}".encode()
        mark_rev = await self.kv.update(entry.key, mark, last=entry.revision)
        if mark_rev is None:
            return None
        if await self.kv.count(f"ref.{ident}.") > 0:
            await self.kv.update(entry.key, str(ident).encode(), last=mark_rev)
            return None
        if not await self.kv.delete(entry.key, last=mark_rev):
            return None
        await self.kv.delete(id_key(ident), last=id_entry.revision)
        self._forget(ident)
        log.info("garbage-collected identity %d", ident)
        return Collected(ident, id_entry.revision, digest)

    def _forget(self, ident: int) -> None:
        digest = self._by_id.pop(ident, None)
        self._incarnation.pop(ident, None)
        if digest is not None and self._by_hash.get(digest) == ident:
            del self._by_hash[digest]
