"""The pure side of ``weir replay``: bus history in, per-node map changes out.

Why this shape: "what did node n2's maps look like at 10:42, and which event changed them?" is
answered by running the history through the *same* pure code a worker runs, the desired-state
model (:class:`~services.datapath.model.DesiredState`) and the reconciler on a
:class:`~services.datapath.fakemaps.FakeLBMap` per node, and diffing the canonical dump
(:func:`~services.datapath.render.render`) after each event. No bus, no clock: records go in, a
:class:`Change` per record comes out, so replaying the same history twice gives byte-identical
output (tested) and the I/O (:mod:`.replay_source`) stays thin.

Nodes come from ``--node`` or from Node events in the history; a node that appears mid-history
starts from the Services and EndpointSlices known at that point, as a real worker's bootstrap
does. Identity and IPCache messages are tracked cluster-wide (no node programs them yet) and
diffed the same way. A message that is not a valid contract message becomes a Change carrying an
error naming the subject, the sequence and the field; replay goes on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from contracts.subjects import PREFIX
from contracts.v1 import Identity, IPCacheEntry, K8sEvent, Op
from services.datapath.fakemaps import FakeLBMap
from services.datapath.model import DesiredState
from services.datapath.reconcile import Reconciler
from services.datapath.render import render

CLUSTER = "*"  # the pseudo-node of cluster-wide tables (identities, ipcache)


@dataclass(frozen=True, slots=True)
class Record:
    """One message of the history, as stored (not yet decoded)."""

    stream: str
    seq: int
    subject: str
    time: datetime
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Change:
    """What one record did: per node (and CLUSTER) the lines added to and removed from the dump."""

    record: Record
    summary: str
    added: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def to_json(self) -> dict[str, object]:
        return {
            "stream": self.record.stream,
            "seq": self.record.seq,
            "subject": self.record.subject,
            "time": self.record.time.isoformat(),
            "summary": self.summary,
            "error": self.error,
            "added": self.added,
            "removed": self.removed,
        }


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more trailing tokens."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pat):
        if tok == ">":
            return len(sub) > i
        if i >= len(sub) or (tok != "*" and tok != sub[i]):
            return False
    return len(pat) == len(sub)


def diff_lines(before: Sequence[str], after: Sequence[str]) -> tuple[list[str], list[str]]:
    """(added, removed) entry lines of two dumps, in dump order; section headers ignored."""
    old, new = set(before), set(after)
    added = [line for line in after if line not in old and not line.startswith("#")]
    removed = [line for line in before if line not in new and not line.startswith("#")]
    return added, removed


class NodeReplay:
    """One node: the worker's model and reconciler on in-memory maps."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.model = DesiredState(node)
        self.maps = FakeLBMap()
        self.reconciler = Reconciler(self.maps)
        self.lines: list[str] = render(self.maps.dump()).splitlines()

    def apply(self, events: Iterable[K8sEvent]) -> bool:
        """Absorb events, reconcile; True when some map entry was written."""
        used = [self.model.apply(e) for e in events]
        if not any(used):
            return False
        changed = self.model.flush()
        return self.reconciler.apply(self.model.frontends, changed).writes > 0

    def render(self) -> str:
        return render(self.maps.dump())


class ReplayModel:
    """Feeds records in order; keeps every node's maps and the cluster-wide tables."""

    def __init__(self, nodes: Sequence[str] = (), *, diffs: bool = True) -> None:
        self.fixed = bool(nodes)
        self.nodes: dict[str, NodeReplay] = {n: NodeReplay(n) for n in nodes}
        self.diffs = diffs
        self.objects: dict[str, tuple[int, K8sEvent]] = {}  # LB-relevant subject -> newest
        self.identities: dict[int, list[str]] = {}
        self.ipcache: dict[str, str] = {}  # ip -> "identity (namespace/pod)"
        self.last: Record | None = None

    def feed(self, record: Record) -> Change:
        self.last = record
        tail = record.subject.removeprefix(f"{PREFIX}.")
        try:
            if tail.startswith("k8s."):
                return self._k8s(record)
            if tail.startswith("identity."):
                return self._identity(record)
            if tail.startswith("ipcache."):
                return self._ipcache(record)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else None
            where = ".".join(str(p) for p in first["loc"]) if first else ""
            where = where or "<message>"
            why = first["msg"] if first else str(exc)
            error = f"{record.subject} (seq {record.seq}): invalid message: {where}: {why}"
            return Change(record, "invalid message", error=error)
        return Change(record, "not a replayable subject", error=f"{record.subject}: skipped")

    # ---- Kubernetes objects -----------------------------------------------------------------

    def _k8s(self, record: Record) -> Change:
        event = K8sEvent.model_validate_json(record.data)
        where = f"{event.namespace}/" if event.namespace else ""
        change = Change(record, f"{event.op.value} {event.kind} {where}{event.name}")
        if event.subject() != record.subject:
            change.error = f"{record.subject} (seq {record.seq}) carries {event.subject()}"
            return change
        if event.kind == "node" and not self.fixed:
            self._node(event, change)
            return change
        if event.kind not in ("service", "endpointslice"):
            return change
        self.objects[record.subject] = (record.seq, event)
        for name, node in self.nodes.items():
            before = node.lines
            if node.apply([event]):
                self._diff(change, name, node, before)
        return change

    def _node(self, event: K8sEvent, change: Change) -> None:
        if event.op is Op.DELETE:
            gone = self.nodes.pop(event.name, None)
            if gone is not None and self.diffs:
                change.removed[event.name] = [ln for ln in gone.lines if not ln.startswith("#")]
            return
        if event.name in self.nodes:
            return
        node = NodeReplay(event.name)
        self.nodes[event.name] = node
        known = [e for _, e in sorted(self.objects.values(), key=lambda item: item[0])]
        before = node.lines
        if known and node.apply(known):
            self._diff(change, event.name, node, before)

    def _diff(self, change: Change, name: str, node: NodeReplay, before: list[str]) -> None:
        if not self.diffs:
            return
        node.lines = node.render().splitlines()
        added, removed = diff_lines(before, node.lines)
        if added:
            change.added[name] = added
        if removed:
            change.removed[name] = removed

    # ---- identities -------------------------------------------------------------------------

    def _identity(self, record: Record) -> Change:
        ident = Identity.model_validate_json(record.data)
        change = Change(record, f"{ident.op.value} identity {ident.id}")
        old = self.identities.get(ident.id)
        new = None if ident.op is Op.DELETE else list(ident.labels)
        if new is None:
            self.identities.pop(ident.id, None)
        else:
            self.identities[ident.id] = new
        self._cluster(change, _id_line(ident.id, old), _id_line(ident.id, new))
        return change

    def _ipcache(self, record: Record) -> Change:
        entry = IPCacheEntry.model_validate_json(record.data)
        change = Change(record, f"{entry.op.value} ipcache {entry.ip}")
        old = self.ipcache.get(entry.ip)
        new = None
        if entry.op is Op.UPSERT:
            new = f"{entry.identity} ({entry.namespace}/{entry.pod_name})"
            self.ipcache[entry.ip] = new
        else:
            self.ipcache.pop(entry.ip, None)
        self._cluster(
            change,
            f"ipcache {entry.ip} -> {old}" if old else None,
            f"ipcache {entry.ip} -> {new}" if new else None,
        )
        return change

    def _cluster(self, change: Change, old: str | None, new: str | None) -> None:
        if old == new:
            return
        if new is not None:
            change.added[CLUSTER] = [new]
        if old is not None:
            change.removed[CLUSTER] = [old]

    # ---- tables -------------------------------------------------------------------------------

    def tables(self) -> dict[str, list[str]]:
        """Current dump per node plus the cluster-wide identity and ipcache tables."""
        out = {name: node.render().splitlines() for name, node in sorted(self.nodes.items())}
        cluster = ["# identities: id -> labels"]
        cluster += [_id_line(i, self.identities[i]) or "" for i in sorted(self.identities)]
        cluster.append("# ipcache: ip -> identity (namespace/pod)")
        cluster += [f"ipcache {ip} -> {self.ipcache[ip]}" for ip in sorted(self.ipcache)]
        out[CLUSTER] = cluster
        return out


def _id_line(identity: int, labels: list[str] | None) -> str | None:
    return None if labels is None else f"identity {identity} {','.join(labels) or '-'}"
