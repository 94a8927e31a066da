"""The API semantics between HTTP and the store: admission, defaulting, ClusterIPs, cascades.

This is what kube-apiserver's per-kind REST strategies do, reduced to the kinds Weir uses:
check name/namespace consistency with the URL, validate, fill server-set metadata (uid,
creationTimestamp, generation), allocate and release ClusterIPs, keep immutable fields, protect a
pod's status from a plain PUT (it has a status subresource), and delete a namespace's contents
with it. It has no HTTP in it, so it is unit-testable with a plain :class:`Store`.

Deliberate deviations from the real server, to keep tests short: a pod's ``status`` given on
create is kept (the real server resets it), and deletes are immediate (no grace period or
finalizers), so the DELETED watch event follows the request at once.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from services.apiserver.clusterip import ClusterIPAllocator
from services.apiserver.patch import apply_patch
from services.apiserver.resources import BY_PATH, Resource
from services.apiserver.status import ApiError, Cause, bad_request, conflict, invalid, not_found
from services.apiserver.store import Obj, Store
from services.apiserver.validation import DeepValidator, validate_meta

NAMESPACES = BY_PATH[("", "v1", "namespaces")]
SERVICES = BY_PATH[("", "v1", "services")]
_SERVER_META = ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp")
_GEN_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _no_deep(_kind: str, _obj: dict[str, Any]) -> list[Cause]:
    return []


@dataclass
class Registry:
    store: Store
    allocator: ClusterIPAllocator = field(default_factory=ClusterIPAllocator)
    deep_validator: DeepValidator = _no_deep

    # -- create ------------------------------------------------------------------------------

    def create(self, res: Resource, url_ns: str | None, body: Any) -> Obj:
        obj = self._admit_body(res, url_ns, body, creating=True)
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        self._check_valid(res, obj)
        self._require_namespace(res, ns)
        for key in _SERVER_META:
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        self._default(res, obj)
        allocated = self._allocate_ips(res, obj) if res == SERVICES else None
        try:
            self._check_deep(res, obj)
            return self.store.create(res, ns, obj)
        except ApiError:
            if allocated:
                self.allocator.release(allocated, undo=True)
            raise

    # -- replace / patch / status --------------------------------------------------------------

    def _admit_update(
        self, res: Resource, url_ns: str | None, name: str, body: Any
    ) -> tuple[Obj, str, Obj, str | None]:
        """The body of a PUT admitted against the stored object: (body, namespace, stored,
        the resourceVersion precondition). The name must match the URL's; a precondition that
        is not the stored version is a conflict."""
        obj = self._admit_body(res, url_ns, body, creating=False)
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        ns = meta.get("namespace", "")
        old = self.store.get(res, ns, name)
        expected = meta.get("resourceVersion") or None
        if expected is not None and expected != old["metadata"].get("resourceVersion"):
            raise conflict(res.plural, res.group, name)
        return obj, ns, old, expected

    def _patched(
        self, res: Resource, url_ns: str | None, name: str, content_type: str, patch: Any
    ) -> tuple[str, Obj, Obj]:
        """(namespace, stored object, the patch applied to a copy of it)."""
        ns = (url_ns if res.namespaced else "") or ""
        old = self.store.get(res, ns, name)
        patched = apply_patch(content_type, copy.deepcopy(old), patch)
        if not isinstance(patched, dict):
            raise bad_request("the patch did not produce an object")
        return ns, old, patched

    def replace(self, res: Resource, url_ns: str | None, name: str, body: Any) -> Obj:
        obj, ns, old, expected = self._admit_update(res, url_ns, name, body)
        meta = obj["metadata"]
        self._check_valid(res, obj)
        old_meta = old["metadata"]
        for key in ("uid", "creationTimestamp"):
            meta[key] = old_meta.get(key)
        if res.plural == "pods":
            obj["status"] = copy.deepcopy(old.get("status", {}))
        self._default(res, obj)
        released: str | None = None
        allocated: str | None = None
        if res == SERVICES:
            released, allocated = self._carry_ips(old, obj)
        meta["generation"] = old_meta.get("generation", 1) + (
            1 if _spec_of(obj) != _spec_of(old) else 0
        )
        try:
            self._check_deep(res, obj)
            stored = self.store.update(res, ns, obj, expected)
        except ApiError:
            if allocated:
                self.allocator.release(allocated, undo=True)
            raise
        if released:
            self.allocator.release(released)
        return stored

    def patch(
        self, res: Resource, url_ns: str | None, name: str, content_type: str, patch: Any
    ) -> Obj:
        _, old, patched = self._patched(res, url_ns, name, content_type, patch)
        meta = patched.setdefault("metadata", {})
        # a resourceVersion in the patch is a precondition; otherwise patch the latest
        if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
            meta["resourceVersion"] = old["metadata"].get("resourceVersion")
        return self.replace(res, url_ns, name, patched)

    def replace_status(self, res: Resource, url_ns: str | None, name: str, body: Any) -> Obj:
        obj, ns, old, expected = self._admit_update(res, url_ns, name, body)
        new = copy.deepcopy(old)
        new["status"] = copy.deepcopy(obj.get("status") or {})
        self._check_deep(res, new)
        return self.store.update(res, ns, new, expected)

    def patch_status(
        self, res: Resource, url_ns: str | None, name: str, content_type: str, patch: Any
    ) -> Obj:
        ns, old, patched = self._patched(res, url_ns, name, content_type, patch)
        new = copy.deepcopy(old)
        new["status"] = patched.get("status") or {}
        self._check_deep(res, new)
        return self.store.update(res, ns, new)

    # -- delete ------------------------------------------------------------------------------

    def delete(
        self, res: Resource, url_ns: str | None, name: str, expected_rv: str | None = None
    ) -> Obj:
        ns = (url_ns or "") if res.namespaced else ""
        if res == NAMESPACES:
            self.store.get(res, "", name)  # 404 before touching the contents
            for inner_res, inner in list(self.store.iter_namespace(name)):
                self._delete_one(inner_res, name, inner["metadata"]["name"], None)
        return self._delete_one(res, ns, name, expected_rv)

    def _delete_one(self, res: Resource, ns: str, name: str, expected_rv: str | None) -> Obj:
        final = self.store.delete(res, ns, name, expected_rv)
        if res == SERVICES:
            for ip in _cluster_ips(final):
                self.allocator.release(ip)
        return final

    # -- helpers -----------------------------------------------------------------------------

    def _admit_body(self, res: Resource, url_ns: str | None, body: Any, creating: bool) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(f"the body of a {res.kind} must be a JSON or YAML object")
        obj = copy.deepcopy(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != res.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({res.api_version})"
            )
        if kind and kind != res.kind:
            raise bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
            )
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise invalid(
                res.kind, res.group, "", [Cause("metadata", "Invalid value: must be an object")]
            )
        if creating and not meta.get("name") and isinstance(meta.get("generateName"), str):
            suffix = "".join(random.choices(_GEN_ALPHABET, k=5))
            meta["name"] = meta["generateName"] + suffix
        if res.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and url_ns and body_ns != url_ns:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            ns = body_ns or url_ns
            if not ns:
                raise bad_request(f"a {res.kind} must be created in a namespace")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        return obj

    def _check_valid(self, res: Resource, obj: Obj) -> None:
        name = str(obj["metadata"].get("name") or "")
        causes = validate_meta(res, obj)
        if res.namespaced:
            causes += [
                Cause("metadata.namespace", c.message, c.reason)
                for c in validate_meta(
                    NAMESPACES, {"metadata": {"name": obj["metadata"]["namespace"]}}
                )
            ]
        if causes:
            raise invalid(res.kind, res.group, name, causes)

    def _check_deep(self, res: Resource, obj: Obj) -> None:
        """Contract validation of the object exactly as it would be stored (defaults applied)."""
        probe = copy.deepcopy(obj)
        probe["metadata"]["resourceVersion"] = str(self.store.rv + 1)
        causes = self.deep_validator(res.kind.lower(), probe)
        if causes:
            raise invalid(res.kind, res.group, str(obj["metadata"].get("name") or ""), causes)

    def _require_namespace(self, res: Resource, ns: str) -> None:
        if res.namespaced and self.store.find(NAMESPACES, "", ns) is None:
            raise not_found("namespaces", "", ns)

    def _default(self, res: Resource, obj: Obj) -> None:
        if res.plural == "namespaces":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj[
                "metadata"
            ]["name"]
        elif res.plural == "pods":
            status = obj.get("status")
            if not isinstance(status, dict):
                obj["status"] = status = {}
            status.setdefault("phase", "Pending")
        elif res == SERVICES:
            spec = obj.get("spec")
            if not isinstance(spec, dict):
                obj["spec"] = spec = {}
            spec.setdefault("type", "ClusterIP")
            if spec["type"] != "ExternalName":
                spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
                    if "port" in port:
                        port.setdefault("targetPort", port["port"])
            obj.setdefault("status", {}).setdefault("loadBalancer", {})

    def _allocate_ips(self, res: Resource, obj: Obj) -> str | None:
        spec = obj["spec"]
        name = obj["metadata"]["name"]
        if spec.get("type") == "ExternalName":
            return None
        requested = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
        if requested == "None":
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            return None
        if requested:
            err = self.allocator.reserve(str(requested))
            if err:
                raise invalid(
                    res.kind,
                    res.group,
                    name,
                    [Cause("spec.clusterIPs", f'Invalid value: ["{requested}"]: {err}')],
                )
            ip = str(requested)
        else:
            ip = self.allocator.allocate()
        spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        return ip

    def _carry_ips(self, old: Obj, new: Obj) -> tuple[str | None, str | None]:
        """Keep a service's ClusterIP across a replace; returns (ip to release, ip allocated)."""
        old_spec, spec = old.get("spec") or {}, new["spec"]
        old_ip = old_spec.get("clusterIP") or ""
        name = new["metadata"]["name"]
        if spec.get("type") == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
            return (old_ip if old_ip and old_ip != "None" else None), None
        new_ip = spec.get("clusterIP") or ""
        if not new_ip and old_ip:
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if key in old_spec:
                    spec[key] = copy.deepcopy(old_spec[key])
            return None, None
        if old_ip and new_ip != old_ip:
            raise invalid(
                "Service",
                "",
                name,
                [
                    Cause(
                        "spec.clusterIPs[0]",
                        f'Invalid value: ["{new_ip}"]: may not change once set',
                    )
                ],
            )
        if not old_ip:
            return None, self._allocate_ips(SERVICES, new)
        return None, None


def _spec_of(obj: Obj) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _cluster_ips(obj: Obj) -> list[str]:
    spec = obj.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [ip for ip in ips if isinstance(ip, str) and ip and ip != "None"]
