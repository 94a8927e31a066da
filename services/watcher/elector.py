"""The leader-lease I/O: one small loop over a NATS KV key, driven by :mod:`.lease` decisions.

The rest of the watcher only sees two events, :meth:`Elector.wait_leader` and
:attr:`Elector.lost`, so the lease mechanics can change without touching the reflectors. Every
KV error (timeouts, a disconnected server, a missing bucket) is caught and turned into "not leader
this round": losing the bus must make a leader step down, never crash the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.common.cancelling import raise_if_cancelled
from services.watcher.lease import (
    Create,
    LeaseRecord,
    LeaseTiming,
    Seen,
    TakeOver,
    leader_must_step_down,
    observe,
    standby_step,
)

log = logging.getLogger(__name__)

LEASE_KEY = "watcher"


class Elector:
    """Campaign for the lease in ``kv`` under ``key`` as ``me``; renew while leading."""

    def __init__(
        self,
        kv: KeyValue,
        me: str,
        *,
        key: str = LEASE_KEY,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._kv = kv
        self._me = me
        self._key = key
        self._timing = timing or LeaseTiming()
        self._clock = clock
        self._on_change = on_change
        self._revision: int | None = None
        self._renewed_at = 0.0
        self._seen: Seen | None = None
        self._leader = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    async def wait_leader(self) -> None:
        await self._leader.wait()

    async def run(self) -> None:
        """Campaign forever (until cancelled); release the lease on the way out."""
        try:
            while True:
                raise_if_cancelled()  # a cancel nats-py lost (services/common/cancelling.py)
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the bus is down, or slow: try again next tick
                    log.warning("lease %s: %s: %s", self._key, type(exc).__name__, exc)
                    if self.is_leader and leader_must_step_down(
                        self._renewed_at, self._clock(), self._timing
                    ):
                        self._set_leader(False)
                await asyncio.sleep(self._timing.renew_interval)
        finally:
            await self.release()

    async def step(self) -> None:
        """One campaign tick: renew if leading, else look at the key and maybe acquire."""
        now = self._clock()
        if self.is_leader:
            if leader_must_step_down(self._renewed_at, now, self._timing):
                self._set_leader(False)
            else:
                await self._renew(now)
                return
        await self._campaign(now)

    async def _renew(self, now: float) -> None:
        try:
            rev = await asyncio.wait_for(
                self._kv.update(self._key, self._record(), last=self._revision),
                timeout=self._timing.renew_interval,
            )
        except KeyWrongLastSequenceError:
            log.warning("lease %s: renew refused, another watcher holds it", self._key)
            self._set_leader(False)
            return
        self._revision, self._renewed_at = rev, now

    async def _campaign(self, now: float) -> None:
        try:
            entry = await self._kv.get(self._key)
            rev, holder = entry.revision, LeaseRecord.decode(entry.value)
            self._seen = observe(self._seen, rev, holder.holder if holder else None, now)
        except KeyNotFoundError as exc:
            # absent, or a delete/purge marker left by a leader that released the lease
            marker_rev = exc.entry.revision if exc.entry is not None else None
            self._seen = observe(self._seen, marker_rev, None, now)
        step = standby_step(self._seen, self._me, now, self._timing)
        try:
            if isinstance(step, Create):
                rev = await self._kv.create(self._key, self._record())
            elif isinstance(step, TakeOver):
                rev = await self._kv.update(self._key, self._record(), last=step.revision)
            else:
                return
        except KeyWrongLastSequenceError:
            return  # lost the race; the winner's revision shows up next tick
        self._revision, self._renewed_at = rev, now
        log.info("lease %s: %s is now the leader (revision %d)", self._key, self._me, rev)
        self._set_leader(True)

    async def release(self) -> None:
        """Give the lease up so a standby need not wait for the ttl (best effort)."""
        if not self.is_leader:
            return
        self._set_leader(False)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._kv.delete(self._key, last=self._revision), timeout=1.0)

    def _record(self) -> bytes:
        return LeaseRecord(holder=self._me, acquired_at=time.time()).encode()

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        if leader:
            self.lost.clear()
            self._leader.set()
        else:
            self._leader.clear()
            self.lost.set()
            self._seen = None
            log.warning("lease %s: %s is no longer the leader", self._key, self._me)
        if self._on_change is not None:
            self._on_change(leader)
