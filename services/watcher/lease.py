"""Leader-lease decisions for running several watchers with exactly one publisher.

The lease is one key in the NATS KV bucket ``WEIR_LEADER``. Its correctness rests on the KV's
compare-and-set, not on clocks: acquiring is a create-only write, renewing and taking over are
``update(last=revision)``, so of two racing writers exactly one wins.

Expiry is judged the way client-go's leader election judges it: by the *observer's* monotonic
clock. A standby remembers the revision it last saw and when that revision first appeared; if the
revision has not moved for ``ttl`` seconds the holder is presumed dead and the standby takes over
with a CAS against that exact revision. No wall-clock time from another machine is trusted, so
clock skew cannot cause two leaders. (If the bucket also has a TTL, the key simply vanishes and the
create-only path applies.)

A leader must stop publishing *before* a standby may take over: it steps down as soon as it has
not renewed for ``renew_deadline`` (< ``ttl``) or a renew is refused. Publishing is idempotent
anyway (deterministic ``Nats-Msg-Id``), so the remaining overlap costs at most a duplicate that
JetStream discards.

This module holds only the decision; :mod:`services.watcher.elector` does the KV I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    ttl: float = 3.0
    renew_interval: float = 1.0
    renew_deadline: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.renew_deadline < self.ttl:
            raise ValueError(
                "lease timing needs 0 < renew_interval < renew_deadline < ttl, got "
                f"{self.renew_interval}, {self.renew_deadline}, {self.ttl}"
            )


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The value stored under the lease key."""

    holder: str
    acquired_at: float

    def encode(self) -> bytes:
        return json.dumps({"holder": self.holder, "acquired_at": self.acquired_at}).encode()

    @staticmethod
    def decode(data: bytes | None) -> LeaseRecord | None:
        """A record, or None for an empty/garbled value (treated as a lease nobody holds)."""
        if not data:
            return None
        try:
            obj = json.loads(data)
            return LeaseRecord(holder=str(obj["holder"]), acquired_at=float(obj["acquired_at"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Seen:
    """What a standby observed: the key's revision (None = absent/deleted) and since when."""

    revision: int | None
    holder: str | None
    since: float


@dataclass(frozen=True, slots=True)
class Create:
    """The key is absent (or a delete marker): try a create-only write."""


@dataclass(frozen=True, slots=True)
class TakeOver:
    """The holder stopped renewing: CAS-replace exactly this revision."""

    revision: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Someone else holds a live lease."""


StandbyStep = Create | TakeOver | Wait


def observe(previous: Seen | None, revision: int | None, holder: str | None, now: float) -> Seen:
    """Fold a fresh read of the key into what we saw before; ``since`` resets on any change."""
    if previous is not None and previous.revision == revision:
        return previous
    return Seen(revision=revision, holder=holder, since=now)


def standby_step(seen: Seen, me: str, now: float, timing: LeaseTiming) -> StandbyStep:
    if seen.revision is None or seen.holder is None:
        return Create() if seen.revision is None else TakeOver(seen.revision)
    if seen.holder == me:
        # Our own record from a previous life of this process name: nobody renews it but us.
        return TakeOver(seen.revision)
    if now - seen.since >= timing.ttl:
        return TakeOver(seen.revision)
    return Wait()


def leader_must_step_down(last_renewed: float, now: float, timing: LeaseTiming) -> bool:
    """True once a leader has gone ``renew_deadline`` without a confirmed renew."""
    return now - last_renewed >= timing.renew_deadline
