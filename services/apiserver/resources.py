"""The resource catalogue: which kinds the stand-in serves, and the discovery documents for them.

Everything the HTTP layer needs to route a path (group, version, plural, namespaced or not) and to
answer kubectl's discovery requests derives from the one ``RESOURCES`` table, so adding a kind is a
one-line change and discovery can never disagree with routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

VERBS: Final = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    singular: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


RESOURCES: Final[tuple[Resource, ...]] = (
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",)),
    Resource("", "v1", "nodes", "Node", False, ("no",)),
    Resource("", "v1", "pods", "Pod", True, ("po",)),
    Resource("", "v1", "services", "Service", True, ("svc",)),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
)

BY_PATH: Final = {(r.group, r.version, r.plural): r for r in RESOURCES}
BY_KIND: Final = {(r.api_version, r.kind): r for r in RESOURCES}
GROUPS: Final = tuple(dict.fromkeys(r.group for r in RESOURCES if r.group))

# Subresources the stand-in serves, by plural.
STATUS_SUBRESOURCE: Final = frozenset({"pods"})


def lookup(group: str, version: str, plural: str) -> Resource | None:
    return BY_PATH.get((group, version, plural))


def lookup_kind(api_version: str, kind: str) -> Resource | None:
    return BY_KIND.get((api_version, kind))


def api_versions() -> dict[str, Any]:
    """GET /api: the legacy core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }


def api_group_list() -> dict[str, Any]:
    """GET /apis: every named group with its (single) version."""
    groups = []
    for g in GROUPS:
        versions = sorted({r.version for r in RESOURCES if r.group == g})
        gvs = [{"groupVersion": f"{g}/{v}", "version": v} for v in versions]
        groups.append({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict[str, Any] | None:
    for g in api_group_list()["groups"]:
        if g["name"] == group:
            return {"kind": "APIGroup", "apiVersion": "v1", **g}
    return None


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """GET /api/v1 or /apis/<group>/<version>: the resources (and subresources) served there."""
    served = [r for r in RESOURCES if r.group == group and r.version == version]
    if not served:
        return None
    items: list[dict[str, Any]] = []
    for r in served:
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular_name,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        items.append(entry)
        if r.plural in STATUS_SUBRESOURCE:
            items.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": items}
