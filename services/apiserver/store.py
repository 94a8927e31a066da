"""The in-memory object store: etcd's model in miniature, with no I/O.

Objects are keyed by (resource, namespace, name). One global, monotonically increasing
resourceVersion orders every change across all resources, as etcd's revision does; every change is
appended to an event log ring that keeps only the last ``retain_events`` entries (compaction).
A watch resumes from a resourceVersion by replaying the log after it; if that point has been
compacted away the store raises 410 Expired, which is what forces clients to relist.

Watches are plain queues fed synchronously inside each mutation, so there is no window between
"replay the log" and "register for new events" (the event loop cannot interleave), and a bookmark
carrying the store's current resourceVersion is always truthful once a watch's queue is drained.

Stored dicts are never mutated in place: a change stores a new dict. Callers must treat what the
store returns as read-only; that lets list and watch hand out objects without copying.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from services.apiserver.resources import Resource
from services.apiserver.status import ApiError, already_exists, conflict, expired, not_found

Obj = dict[str, Any]
Predicate = Callable[[Obj], bool]

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


def _match_all(_obj: Obj) -> bool:
    return True


@dataclass(frozen=True)
class Event:
    rv: int
    type: str
    resource: Resource
    namespace: str
    obj: Obj
    prev: Obj | None = None


@dataclass(eq=False)
class Watch:
    """One open watch: events for one resource (optionally one namespace) that pass a predicate.

    A MODIFIED that moves an object into the predicate is delivered as ADDED and one that moves it
    out as DELETED, like the real server's filtered watch.
    """

    resource: Resource
    namespace: str | None
    predicate: Predicate = _match_all
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)  # None: end
    closed: bool = False

    def offer(self, ev: Event) -> None:
        if self.closed or ev.resource != self.resource:
            return
        if self.namespace is not None and ev.namespace != self.namespace:
            return
        now = self.predicate(ev.obj)
        if ev.type == MODIFIED and ev.prev is not None:
            before = self.predicate(ev.prev)
            if now and not before:
                ev = Event(ev.rv, ADDED, ev.resource, ev.namespace, ev.obj)
            elif before and not now:
                ev = Event(ev.rv, DELETED, ev.resource, ev.namespace, ev.obj)
                now = True
        if now:
            self.queue.put_nowait(ev)


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def parse_rv(value: str | None, what: str = "resourceVersion") -> int | None:
    """None for unset/empty; raises 400 for non-numeric (the real server rejects those too)."""
    if value is None or value == "":
        return None
    try:
        rv = int(value)
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid {what}: {value!r}") from None
    if rv < 0:
        raise ApiError(400, "BadRequest", f"invalid {what}: {value!r}")
    return rv


class Store:
    def __init__(self, retain_events: int = 10_000) -> None:
        if retain_events < 0:
            raise ValueError("retain_events must be >= 0")
        self.retain_events = retain_events
        self.rv = 0
        self.compacted_rv = 0  # every event with rv > compacted_rv is still in the log
        self._objects: dict[Resource, dict[tuple[str, str], Obj]] = {}
        self._log: deque[Event] = deque()
        self._watches: set[Watch] = set()

    # -- reads -------------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        obj = self._objects.get(res, {}).get((namespace, name))
        if obj is None:
            raise not_found(res.plural, res.group, name)
        return obj

    def find(self, res: Resource, namespace: str, name: str) -> Obj | None:
        return self._objects.get(res, {}).get((namespace, name))

    def list(self, res: Resource, namespace: str | None = None) -> tuple[list[Obj], int]:
        """Objects sorted by (namespace, name), with the store resourceVersion they reflect."""
        objs = self._objects.get(res, {})
        keys = sorted(k for k in objs if namespace is None or k[0] == namespace)
        return [objs[k] for k in keys], self.rv

    def iter_namespace(self, namespace: str) -> Iterator[tuple[Resource, Obj]]:
        for res, objs in self._objects.items():
            for (ns, _name), obj in list(objs.items()):
                if ns == namespace:
                    yield res, obj

    def check_not_compacted(self, rv: int, message: str) -> None:
        if rv < self.compacted_rv:
            raise expired(message)

    # -- writes ------------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str, obj: Obj) -> Obj:
        name = _meta(obj).get("name", "")
        objs = self._objects.setdefault(res, {})
        if (namespace, name) in objs:
            raise already_exists(res.plural, res.group, name)
        stored = self._stamp(obj)
        objs[(namespace, name)] = stored
        self._append(Event(self.rv, ADDED, res, namespace, stored))
        return stored

    def _current(
        self, res: Resource, namespace: str, name: str, expected_rv: str | None
    ) -> tuple[dict[tuple[str, str], Obj], Obj]:
        """(the resource's objects, the stored one): 404 if absent, 409 if ``expected_rv`` is set
        and is not its resourceVersion."""
        objs = self._objects.get(res, {})
        old = objs.get((namespace, name))
        if old is None:
            raise not_found(res.plural, res.group, name)
        if expected_rv and expected_rv != _meta(old).get("resourceVersion"):
            raise conflict(res.plural, res.group, name)
        return objs, old

    def update(
        self, res: Resource, namespace: str, obj: Obj, expected_rv: str | None = None
    ) -> Obj:
        """Replace an object. ``expected_rv`` (if set) must equal the stored one, else 409."""
        name = _meta(obj).get("name", "")
        objs, old = self._current(res, namespace, name, expected_rv)
        stored = self._stamp(obj)
        objs[(namespace, name)] = stored
        self._append(Event(self.rv, MODIFIED, res, namespace, stored, old))
        return stored

    def delete(
        self, res: Resource, namespace: str, name: str, expected_rv: str | None = None
    ) -> Obj:
        """Remove an object; the DELETED event carries its last state at a new resourceVersion."""
        objs, old = self._current(res, namespace, name, expected_rv)
        del objs[(namespace, name)]
        final = self._stamp(old)
        self._append(Event(self.rv, DELETED, res, namespace, final))
        return final

    def compact(self, keep: int = 0) -> int:
        """Drop all but the newest ``keep`` events; returns the new compacted resourceVersion."""
        while len(self._log) > keep:
            self.compacted_rv = self._log.popleft().rv
        if keep == 0:
            self.compacted_rv = self.rv
        return self.compacted_rv

    # -- watches -----------------------------------------------------------------------------

    def watch(
        self,
        res: Resource,
        namespace: str | None,
        since_rv: int | None,
        predicate: Predicate = _match_all,
    ) -> Watch:
        """Open a watch.

        ``since_rv`` None or 0 means "from now": the current objects are sent first as ADDED
        (as the real server does for an unset or "0" resourceVersion). Otherwise every retained
        event after ``since_rv`` is replayed; 410 Expired if that history was compacted.
        """
        w = Watch(res, namespace, predicate)
        if since_rv:
            if since_rv < self.compacted_rv:
                raise expired(f"too old resource version: {since_rv} ({self.compacted_rv})")
            for ev in self._log:
                if ev.rv > since_rv:
                    w.offer(ev)
        else:
            objs, _ = self.list(res, namespace)
            for obj in objs:
                ns = _meta(obj).get("namespace", "") or ""
                rv = int(_meta(obj).get("resourceVersion", "0"))
                w.offer(Event(rv, ADDED, res, ns, obj))
        self._watches.add(w)
        return w

    def stop_watch(self, w: Watch) -> None:
        w.closed = True
        self._watches.discard(w)

    def close_watches(self) -> None:
        """End every open watch stream (server shutdown)."""
        for w in list(self._watches):
            w.queue.put_nowait(None)
            self.stop_watch(w)

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    # -- internals ---------------------------------------------------------------------------

    def _stamp(self, obj: Obj) -> Obj:
        self.rv += 1
        out = copy.deepcopy(obj)
        out.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        return out

    def _append(self, ev: Event) -> None:
        self._log.append(ev)
        if len(self._log) > self.retain_events:
            self.compacted_rv = self._log.popleft().rv
        for w in list(self._watches):
            w.offer(ev)
