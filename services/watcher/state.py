"""What the watcher has published, and the pure decisions that keep the bus in step with it.

A watch stream is not a reliable changelog: it ends, it is compacted away (410 Gone), it may go
silent, and leadership may move to a watcher that never saw the earlier stream. Every one of those
cases is handled the same way: list again and *diff* the listing against what was last published.
That diff lives here, free of I/O, so it can be table-tested and so the watch-event path and the
relist path share one rule for "is this worth a message?":

* the index maps ``(kind, namespace, name)`` to the ``(uid, resourceVersion, digest)`` last
  published, where ``digest`` hashes the *normalised* contract payload (not the raw object), so a
  change the contract does not carry (status churn, managedFields) publishes nothing;
* a listed object with a new uid under a known name is a re-creation: DELETE old, UPSERT new;
* an indexed object missing from a complete listing vanished while we were not watching: DELETE;
* an object that fails contract validation is *reported* (once per resourceVersion) and otherwise
  ignored: the last valid state stays published and is not deleted. A consumer keeps serving the
  last good Service rather than dropping traffic because someone wrote a bad port; the report on
  ``weir.v1.errors.*`` and the metric tell the operator. If the object is later deleted the DELETE
  is published as usual, and if it becomes valid again its UPSERT is.

The index is updated only with :meth:`PublishedIndex.record` after the bus accepted a message, so
a failed publish leaves the index describing the bus and the next relist retries exactly the gap.

Keys, fingerprints, observations and actions are immutable named tuples rather than frozen
dataclasses: a relist makes four or five of them per object and hashes keys several times, and a
frozen dataclass pays ``object.__setattr__`` per field and a Python-level ``__hash__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class ObjectKey(NamedTuple):
    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


class Fingerprint(NamedTuple):
    uid: str
    resource_version: str
    digest: str


class Valid(NamedTuple):
    """An object that passed contract validation; ``payload`` is what an UPSERT publishes,
    ``data`` its serialised form when the normaliser made it (else the sink serialises)."""

    key: ObjectKey
    fingerprint: Fingerprint
    payload: Any
    data: bytes = b""


class Invalid(NamedTuple):
    """An object the contract rejected: which field, and why."""

    key: ObjectKey
    uid: str
    resource_version: str
    field: str
    message: str


Observation = Valid | Invalid


class Upsert(NamedTuple):
    key: ObjectKey
    fingerprint: Fingerprint
    payload: Any
    data: bytes = b""


class Delete(NamedTuple):
    """Publish a tombstone; ``final`` is the deleted object's observation when the API sent one."""

    key: ObjectKey
    fingerprint: Fingerprint
    final: Observation | None = None


class Report(NamedTuple):
    invalid: Invalid


Action = Upsert | Delete | Report


@dataclass(slots=True)
class PublishedIndex:
    """(kind, ns, name) -> fingerprint of the last UPSERT on the bus; absent means deleted/never."""

    _entries: dict[ObjectKey, Fingerprint] = field(default_factory=dict)
    _reported: dict[ObjectKey, str] = field(default_factory=dict)

    def get(self, key: ObjectKey) -> Fingerprint | None:
        return self._entries.get(key)

    def keys(self, kind: str) -> Iterator[ObjectKey]:
        return (k for k in self._entries if k.kind == kind)

    def __len__(self) -> int:
        return len(self._entries)

    def seed(self, key: ObjectKey, fingerprint: Fingerprint) -> None:
        """Load a fingerprint read back from the bus (leader takeover, restart)."""
        self._entries[key] = fingerprint

    def record(self, action: Action) -> None:
        """Remember an action whose message the bus has accepted."""
        match action:
            case Upsert(key=key, fingerprint=fp):
                self._entries[key] = fp
                self._reported.pop(key, None)
            case Delete(key=key):
                self._entries.pop(key, None)
                self._reported.pop(key, None)
            case Report(invalid=inv):
                self._reported[inv.key] = inv.resource_version

    def already_reported(self, invalid: Invalid) -> bool:
        return self._reported.get(invalid.key) == invalid.resource_version


def _same_content(old: Fingerprint, new: Fingerprint) -> bool:
    return old.uid == new.uid and old.digest == new.digest


def decide_present(index: PublishedIndex, obs: Observation) -> list[Action]:
    """An object exists (ADDED/MODIFIED watch event, or one item of a listing)."""
    if isinstance(obs, Invalid):
        return [] if index.already_reported(obs) else [Report(obs)]
    old = index.get(obs.key)
    if old is None:  # the common case of a first listing, once per object: no Python-level
        return [tuple.__new__(Upsert, obs)]  # __new__ (an Upsert's fields are a Valid's)
    if _same_content(old, obs.fingerprint):
        return []
    upsert = tuple.__new__(Upsert, obs)
    if old.uid != obs.fingerprint.uid:
        return [Delete(obs.key, old), upsert]
    return [upsert]


assert Upsert._fields == Valid._fields  # decide_present builds one from the other


def decide_deleted(index: PublishedIndex, final: Observation) -> list[Action]:
    """A DELETED watch event. A delete for a uid we never published (or already deleted) is moot."""
    old = index.get(final.key)
    uid = final.fingerprint.uid if isinstance(final, Valid) else final.uid
    if old is None or (uid and old.uid != uid):
        return []
    return [Delete(final.key, old, final)]


class RelistDiff:
    """The diff of one *complete* listing of ``kind``, fed in pieces so a relist can publish
    while it is still normalising: :meth:`present` per listed object, then :meth:`vanished` once.

    Invalid objects count as present, so a bad edit never turns into a DELETE. A key listed twice
    counts once (the first). Pieces may be published as they come: their keys are distinct, and
    a re-creation's DELETE + UPSERT pair stays within one piece, in that order.
    """

    def __init__(self, index: PublishedIndex, kind: str) -> None:
        self._index = index
        self._kind = kind
        self._seen: set[ObjectKey] = set()

    def present(self, obs: Observation) -> list[Action]:
        key, seen = obs.key, self._seen
        if key in seen:
            return []
        seen.add(key)
        return decide_present(self._index, obs)

    def vanished(self) -> list[Action]:
        """DELETEs for what the index has and the listing did not (call after every present)."""
        gone = sorted(key for key in self._index.keys(self._kind) if key not in self._seen)
        return [Delete(key, fp) for key in gone if (fp := self._index.get(key)) is not None]


def decide_relist(index: PublishedIndex, kind: str, listed: Iterable[Observation]) -> list[Action]:
    """Diff a *complete* listing of ``kind`` against the index: deletes first, then upserts."""
    diff = RelistDiff(index, kind)
    changes = [action for obs in listed for action in diff.present(obs)]
    return diff.vanished() + changes
