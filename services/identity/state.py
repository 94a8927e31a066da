"""What the identity service knows about pods, namespaces and the published ipcache (pure).

Why this shape: the decisions "which pods need a new identity after this event" and "which
ipcache messages does this change need" are pure functions of the known state, so they are kept
apart from the allocator and the bus and tested as tables. Every allocator keeps the *whole*
state (each runs its own durable consumer): a namespace label change must re-identify every pod
of that namespace, which a consumer that saw only a share of the pod events could not do.

Ordering: per subject the last applied stream sequence is kept, so a message older than what
the bootstrap snapshot already reflected (redelivered, or replayed from the durable's start) is
skipped instead of briefly rolling a pod back. The ipcache table remembers which pod owns each
IP, so a deleted pod never tombstones an IP that a newer pod already took over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from contracts.v1 import K8sEvent, Namespace, Op, Pod


@dataclass(frozen=True)
class PodView:
    """The fields of a pod that identity and ipcache depend on."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    pod: Pod

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IPEntry:
    """One desired ipcache entry: ``ip`` belongs to pod ``owner`` with ``identity``."""

    ip: str
    identity: int
    owner: str  # "<namespace>/<name>"
    node_name: str | None = None
    host_ip: str | None = None
    resource_version: str | None = field(default=None, compare=False)  # not a change


@dataclass
class ClusterState:
    """Pods and namespace labels, updated by K8sEvents in stream order."""

    pods: dict[str, PodView] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)  # subject -> stream sequence

    def is_stale(self, subject: str, seq: int) -> bool:
        return seq <= self.applied.get(subject, 0)

    def apply(self, event: K8sEvent, seq: int) -> list[str]:
        """Apply one event; returns the keys of the pods whose identity must be re-derived.

        A returned key that is no longer in :attr:`pods` means "the pod is gone".
        """
        self.applied[event.subject()] = seq
        if event.kind == "namespace":
            labels: dict[str, str] = {}
            if event.op is Op.UPSERT and isinstance(event.object, Namespace):
                labels = dict(event.object.labels)
            old = self.namespaces.get(event.name)
            if event.op is Op.DELETE:
                self.namespaces.pop(event.name, None)
            else:
                self.namespaces[event.name] = labels
            if old == self.namespaces.get(event.name):
                return []
            prefix = f"{event.name}/"
            return sorted(k for k in self.pods if k.startswith(prefix))
        if event.kind != "pod" or event.namespace is None:
            return []
        key = f"{event.namespace}/{event.name}"
        if event.op is Op.DELETE or not isinstance(event.object, Pod):
            return [key] if self.pods.pop(key, None) is not None else []
        self.pods[key] = PodView(
            event.namespace, event.name, event.uid, event.resource_version, event.object
        )
        return [key]


def pod_entries(view: PodView, identity: int | None) -> list[IPEntry]:
    """The ipcache entries a pod should have; none without an identity or IP, or on host net."""
    if identity is None or view.pod.host_network:
        return []
    return [
        IPEntry(
            ip=ip,
            identity=identity,
            owner=view.key,
            node_name=view.pod.node_name,
            host_ip=view.pod.host_ip,
            resource_version=view.resource_version,
        )
        for ip in view.pod.ips
    ]


@dataclass
class IPCacheTable:
    """The ipcache as published; :meth:`set_owner` returns the messages a change needs."""

    entries: dict[str, IPEntry] = field(default_factory=dict)

    def load(self, published: Mapping[str, IPEntry]) -> None:
        self.entries = dict(published)

    def set_owner(self, owner: str, desired: list[IPEntry]) -> tuple[list[IPEntry], list[IPEntry]]:
        """Make ``owner``'s entries equal ``desired``: (upserts, deletes) to publish."""
        want = {e.ip: e for e in desired}
        deletes = [
            e for ip, e in sorted(self.entries.items()) if e.owner == owner and ip not in want
        ]
        for e in deletes:
            del self.entries[e.ip]
        upserts = [e for ip, e in sorted(want.items()) if self.entries.get(ip) != e]
        for e in upserts:
            self.entries[e.ip] = e
        return upserts, deletes

    def orphans(self, owners: set[str]) -> list[IPEntry]:
        """Entries whose owner is not in ``owners``: removed from the table, to tombstone."""
        gone = [e for _, e in sorted(self.entries.items()) if e.owner not in owners]
        for e in gone:
            del self.entries[e.ip]
        return gone
