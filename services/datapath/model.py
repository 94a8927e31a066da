"""Desired load-balancing state from Services and EndpointSlices: kube-proxy's semantics, pure.

Which endpoints a node may use for a frontend is the part of a kube-proxy replacement that users
notice when it is wrong, so it lives here with no I/O and is table-tested. The rules follow
kube-proxy (``pkg/proxy/topology.go`` CategorizeEndpoints and ``endpointslicecache.go``):

* ready endpoints are used; if none is ready, serving+terminating ones are (state TERMINATING);
* ``publishNotReadyAddresses`` makes every endpoint count as ready;
* traffic policy Local (internal for cluster IPs, external for external and LB IPs) keeps only
  endpoints on this node, with the same ready -> terminating fallback but never a fallback to
  remote endpoints: none local means the frontend refuses connections;
* a service port's backend port comes from the slice port of the same name and protocol (the
  EndpointSlice controller has resolved named target ports there); numeric target ports are used
  for slices that list no ports;
* headless and ExternalName services get no frontend; endpoints are deduplicated across slices
  (a ready copy wins); only the first address of an endpoint counts, only IPv4 is programmed.

:class:`DesiredState` keeps the objects and recomputes only the services touched since the last
:meth:`DesiredState.flush`, so one change costs one service, not the cluster.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from contracts.subjects import k8s_subject
from contracts.v1.endpointslice import Endpoint, EndpointSlice
from contracts.v1.envelope import K8sEvent, Op
from contracts.v1.service import Service, ServicePort
from services.datapath.frontend import Backend, BackendAddr, Frontend, FrontendSpec
from services.datapath.lbmap import PROTO_NUMBERS, BackendState, ServiceFlags

ServiceRef = tuple[str, str]  # (namespace, name)


class Candidate(NamedTuple):
    """One endpoint of one service port, after port resolution and deduplication (a named
    tuple: a cold sync builds one per endpoint, 100,000 of them)."""

    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None = None

    def rank(self) -> int:
        return _rank(self)


def _rank(ep: EndpointView | Candidate) -> int:
    """Which copy of a duplicated endpoint wins: ready, else serving, else any."""
    return 0 if ep.ready else 1 if ep.serving else 2


class EndpointView(NamedTuple):
    """What backend selection reads of one endpoint: its first address and its conditions."""

    ip: str
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None


class SliceView(NamedTuple):
    """What backend selection reads of an EndpointSlice. The model keeps these instead of the
    contract objects: at 100,000 endpoints the pydantic objects cost ~250 MB, these a fraction."""

    address_type: str
    ports: tuple[tuple[str, str, int | None], ...]  # (name or "", protocol, port)
    endpoints: tuple[EndpointView, ...]

    @classmethod
    def of(cls, es: EndpointSlice) -> SliceView:
        return cls(
            es.address_type,
            tuple((p.name or "", p.protocol, p.port) for p in es.ports),
            tuple(_endpoint_view(ep) for ep in es.endpoints),
        )


class PortView(NamedTuple):
    """What frontend building reads of one service port."""

    name: str | None
    protocol: str
    port: int
    target_port: int | str


class ServiceView(NamedTuple):
    """What frontend building reads of a Service (kept instead of the contract object, which
    costs several times more per Service at 10,000 Services)."""

    type: str
    headless: bool
    cluster_ips: tuple[str, ...]
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]
    ports: tuple[PortView, ...]
    session_affinity: str
    session_affinity_timeout_seconds: int
    external_traffic_policy: str
    internal_traffic_policy: str
    publish_not_ready_addresses: bool

    @classmethod
    def of(cls, svc: Service) -> ServiceView:
        return cls(
            svc.type,
            svc.headless,
            tuple(svc.cluster_ips),
            tuple(svc.external_ips),
            tuple(svc.load_balancer_ips),
            tuple(PortView(p.name, p.protocol, p.port, p.target_port) for p in svc.ports),
            svc.session_affinity,
            svc.session_affinity_timeout_seconds,
            svc.external_traffic_policy,
            svc.internal_traffic_policy,
            svc.publish_not_ready_addresses,
        )


class Change(NamedTuple):
    """One Service or EndpointSlice event as the model absorbs it (see services.datapath.decode,
    which builds these straight from the bus JSON)."""

    kind: str
    op: Op
    namespace: str
    name: str
    observed_at: float  # the watcher's clock, seconds since the epoch
    obj: ServiceView | SliceView | None
    owner: str | None = None  # an EndpointSlice's service name

    @classmethod
    def of(cls, event: K8sEvent) -> Change:
        obj: ServiceView | SliceView | None = None
        owner = None
        if isinstance(event.object, Service):
            obj = ServiceView.of(event.object)
        elif isinstance(event.object, EndpointSlice):
            obj, owner = SliceView.of(event.object), event.object.service_name
        return cls(
            event.kind,
            event.op,
            event.namespace or "",
            event.name,
            event.observed_at.timestamp(),
            obj,
            owner,
        )

    def subject(self) -> str:
        return k8s_subject(self.kind, self.namespace or None, self.name)


def _endpoint_view(ep: Endpoint) -> EndpointView:
    c = ep.conditions
    return EndpointView(ep.addresses[0], c.ready, c.serving, c.terminating, ep.node_name)


def select_endpoints(
    candidates: Iterable[Candidate], *, node: str, local_only: bool, publish_not_ready: bool
) -> list[tuple[Candidate, BackendState]]:
    """CategorizeEndpoints for one policy: ready first, else serving+terminating; Local keeps
    only this node's endpoints and never falls back to remote ones."""
    ready, pool = _categorize(list(candidates), node, local_only, publish_not_ready)
    if ready:
        return [(c, BackendState.ACTIVE) for c in ready]
    return [(c, BackendState.TERMINATING) for c in pool if c.serving and c.terminating]


def _categorize(
    candidates: list[Candidate], node: str, local_only: bool, publish_not_ready: bool
) -> tuple[list[Candidate], list[Candidate]]:
    """(ready, pool): the endpoints to use as ACTIVE, and the pool the fallback draws from."""
    pool = [c for c in candidates if c[5] == node] if local_only else candidates  # [5]: node
    return (pool if publish_not_ready else [c for c in pool if c[2]]), pool  # [2]: ready


_first = operator.itemgetter(0)
_ACTIVE, _TERMINATING = BackendState.ACTIVE, BackendState.TERMINATING


def _is_ipv4(ip: str) -> bool:
    return ":" not in ip


def port_candidates(
    ref: ServiceRef,
    sp: ServicePort | PortView,
    slices: Iterable[tuple[str, EndpointSlice | SliceView]],
) -> tuple[list[Candidate], list[str]]:
    """Deduplicated candidates of one service port across the service's slices (by name)."""
    errors: list[str] = []
    want_name = sp.name or ""
    best: dict[str, tuple[int, EndpointView, int]] = {}  # ip -> (rank, endpoint, port)
    get = best.get
    slices = list(slices)
    for slice_name, raw in sorted(slices, key=_first) if len(slices) > 1 else slices:
        es = raw if isinstance(raw, SliceView) else SliceView.of(raw)
        if es.address_type != "IPv4" or not es.endpoints:
            continue
        port: int | None = None
        for p_name, p_protocol, p_port in es.ports:
            if p_name == want_name and p_protocol == sp.protocol:
                port = p_port
                break
        else:
            if not es.ports and isinstance(sp.target_port, int):
                port = sp.target_port
            elif not es.ports:
                errors.append(
                    f"service {ref[0]}/{ref[1]}: ports[{want_name or 0}].targetPort "
                    f"{sp.target_port!r} is named but endpointslice {slice_name} lists no ports"
                )
        if port is None:
            continue
        # once per endpoint (100,000 at a cold sync): _is_ipv4 and _rank inlined
        for ep in es.endpoints:
            ip, ready, serving = ep[0], ep[1], ep[2]
            if ":" in ip:
                continue
            rank = 0 if ready else 1 if serving else 2
            old = get(ip)
            if old is None or rank < old[0]:
                best[ip] = (rank, ep, port)
    new = tuple.__new__  # the named tuple's own __new__ is a Python-level call
    out = []
    for ip in sorted(best):
        _r, ep, port = best[ip]
        out.append(new(Candidate, (ip, port, ep[1], ep[2], ep[3], ep[4])))
    return out, errors


# (ClientIP affinity, traffic policy Local) -> master flags: enum arithmetic costs microseconds
_FLAGS = {
    (affinity, local): ServiceFlags(
        (ServiceFlags.SESSION_AFFINITY if affinity else 0)
        | (ServiceFlags.LOCAL_ONLY if local else 0)
    )
    for affinity in (False, True)
    for local in (False, True)
}


def _backends(
    candidates: list[Candidate], proto: int, *, node: str, local_only: bool, publish_not_ready: bool
) -> tuple[Backend, ...]:
    """:func:`select_endpoints` and the Backend tuple it yields, in one pass (once per frontend
    on every change: the common case, all ready and no Local policy, builds no extra list)."""
    if local_only:
        ready, pool = _categorize(candidates, node, local_only, publish_not_ready)
    else:  # _categorize without the call (Cluster policy: every candidate is in the pool)
        pool = candidates
        ready = pool if publish_not_ready else [c for c in pool if c[2]]  # [2]: ready
    new = tuple.__new__  # the named tuples' __new__ is Python-level
    if ready:  # candidates come sorted by IP and unique by IP: already in Backend order
        return tuple(
            [new(Backend, (new(BackendAddr, (c[0], c[1], proto)), _ACTIVE)) for c in ready]
        )
    return tuple(
        [
            new(Backend, (new(BackendAddr, (c[0], c[1], proto)), _TERMINATING))
            for c in pool
            if c[3] and c[4]  # serving and terminating
        ]
    )


def service_frontends(
    ref: ServiceRef,
    svc: Service | ServiceView,
    slices: Iterable[tuple[str, EndpointSlice | SliceView]],
    node: str,
) -> tuple[dict[Frontend, FrontendSpec], list[str]]:
    """Every frontend of one service with its backends as seen from ``node``, and the problems
    found (each naming the service and the field)."""
    if svc.headless or svc.type == "ExternalName":
        return {}, []
    slices = list(slices)
    errors: list[str] = []
    internal = [ip for ip in svc.cluster_ips if ":" not in ip]  # IPv4 only
    external: list[str] = []
    if svc.external_ips or svc.load_balancer_ips:
        external = [
            ip
            for ip in dict.fromkeys([*svc.external_ips, *svc.load_balancer_ips])
            if ":" not in ip and ip not in internal
        ]
    affinity = svc.session_affinity == "ClientIP"
    timeout = svc.session_affinity_timeout_seconds if affinity else 0
    pnr = svc.publish_not_ready_addresses
    owner = f"{ref[0]}/{ref[1]}"
    out: dict[Frontend, FrontendSpec] = {}
    new = tuple.__new__  # the named tuples' __new__ is Python-level
    for sp in svc.ports:
        proto = PROTO_NUMBERS[sp.protocol]
        candidates, errs = port_candidates(ref, sp, slices)
        if errs:
            errors.extend(errs)
        made_for: bool | None = None  # the policy ``backends`` were selected for
        backends: tuple[Backend, ...] = ()
        for vips, policy in (
            (internal, svc.internal_traffic_policy),
            (external, svc.external_traffic_policy),
        ):
            if not vips:
                continue
            local = policy == "Local"
            if local is not made_for:  # internal and external with one policy: built once
                backends = _backends(
                    candidates, proto, node=node, local_only=local, publish_not_ready=pnr
                )
                made_for = local
            spec = new(
                FrontendSpec, (backends, _FLAGS[affinity, local], timeout, owner, sp.name or "")
            )
            for vip in vips:
                out[new(Frontend, (vip, sp.port, proto))] = spec
    return out, errors


class DesiredState:
    """The Services and EndpointSlices seen so far and the frontends they yield on one node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.services: dict[ServiceRef, ServiceView] = {}
        self.slices: dict[ServiceRef, SliceView] = {}  # (namespace, slice name)
        self._slice_owner: dict[ServiceRef, ServiceRef] = {}
        self._slices_of: dict[ServiceRef, set[str]] = {}
        self._owned: dict[ServiceRef, dict[Frontend, FrontendSpec]] = {}
        self._claims: dict[Frontend, set[ServiceRef]] = {}
        self._contested: set[Frontend] = set()  # claimed by more than one service
        self.frontends: dict[Frontend, FrontendSpec] = {}
        self._backend_refs: dict[BackendAddr, int] = {}  # frontends using each backend
        self.errors: dict[ServiceRef, list[str]] = {}
        self._dirty: set[ServiceRef] = set()

    def apply(self, event: K8sEvent | Change) -> bool:
        """Absorb one event; False for kinds the datapath does not use."""
        ch = event if isinstance(event, Change) else Change.of(event)
        if ch.kind == "service":
            if ch.op is Op.DELETE:
                self.delete_service(ch.namespace, ch.name)
            elif isinstance(ch.obj, ServiceView):
                self.upsert_service(ch.namespace, ch.name, ch.obj)
            return True
        if ch.kind == "endpointslice":
            if ch.op is Op.DELETE:
                self.delete_slice(ch.namespace, ch.name)
            elif isinstance(ch.obj, SliceView):
                self.upsert_slice(ch.namespace, ch.name, ch.obj, ch.owner)
            return True
        return False

    def upsert_service(self, namespace: str, name: str, svc: Service | ServiceView) -> None:
        view = svc if isinstance(svc, ServiceView) else ServiceView.of(svc)
        self.services[(namespace, name)] = view
        self._dirty.add((namespace, name))

    def delete_service(self, namespace: str, name: str) -> None:
        self.services.pop((namespace, name), None)
        self._dirty.add((namespace, name))

    def upsert_slice(
        self, namespace: str, name: str, es: EndpointSlice | SliceView, owner: str | None = None
    ) -> None:
        """``owner``: the service name, when ``es`` is already a view (which does not keep it)."""
        if isinstance(es, EndpointSlice):
            owner = es.service_name
            es = SliceView.of(es)
        key = (namespace, name)
        was = self._slice_owner.get(key)
        if was is not None and owner is not None and was[1] == owner:
            self.slices[key] = es  # the same service's slice again (most changes): no re-index
            self._dirty.add(was)
            return
        self.delete_slice(namespace, name)
        self.slices[key] = es
        if owner:
            self._slice_owner[(namespace, name)] = (namespace, owner)
            self._slices_of.setdefault((namespace, owner), set()).add(name)
            self._dirty.add((namespace, owner))

    def delete_slice(self, namespace: str, name: str) -> None:
        self.slices.pop((namespace, name), None)
        owner = self._slice_owner.pop((namespace, name), None)
        if owner is not None:
            names = self._slices_of.get(owner, set())
            names.discard(name)
            if not names:
                self._slices_of.pop(owner, None)
            self._dirty.add(owner)

    def slices_of(self, ref: ServiceRef) -> list[tuple[str, EndpointSlice | SliceView]]:
        names = self._slices_of.get(ref)
        if not names:
            return []
        ns, slices = ref[0], self.slices
        if len(names) == 1:
            (name,) = names
            return [(name, slices[(ns, name)])]
        return [(n, slices[(ns, n)]) for n in sorted(names)]

    def flush(self) -> set[Frontend]:
        """Recompute the services touched since the last flush; return the frontends whose
        desired spec changed (appeared, changed or vanished). A frontend whose service was
        touched but whose spec came out equal is not returned: nothing to write for it."""
        changed: set[Frontend] = set()
        dirty, self._dirty = self._dirty, set()
        services, owned, claims, errors = self.services, self._owned, self._claims, self.errors
        for ref in dirty:  # order-free: _resolve picks the winner of a frontend by min(claims)
            svc = services.get(ref)
            new: dict[Frontend, FrontendSpec] = {}
            errors.pop(ref, None)
            if svc is not None:
                new, errs = service_frontends(ref, svc, self.slices_of(ref), self.node)
                if errs:
                    errors[ref] = errs
            old = owned.pop(ref, None)
            if new:
                owned[ref] = new
            if old:
                for fe, spec in old.items():
                    now = new.get(fe)
                    if now is None:  # vanished from this service
                        claims[fe].discard(ref)
                        changed.add(fe)
                    elif now == spec:
                        new[fe] = spec  # unchanged: keep the object the model already holds
                    else:
                        changed.add(fe)
            for fe in new:
                if old is None or fe not in old:  # appeared in this service
                    claim = claims.get(fe)
                    if claim is None:
                        claims[fe] = {ref}
                    else:
                        claim.add(ref)
                    changed.add(fe)
        for fe in changed:
            self._resolve(fe)
        return changed

    def _resolve(self, fe: Frontend) -> None:
        claims = self._claims.get(fe)
        new = self._owned[min(claims)][fe] if claims else None
        if claims is not None and len(claims) > 1:  # problems() reads these, not every claim
            self._contested.add(fe)
        elif self._contested:
            self._contested.discard(fe)
        old = self.frontends.pop(fe, None) if new is None else self.frontends.get(fe)
        if new is None:
            self._claims.pop(fe, None)
        else:
            self.frontends[fe] = new
        if old is new:
            return
        refs = self._backend_refs
        if old is not None:
            for addr, _state in old.backends:
                left = refs[addr] - 1
                if left:
                    refs[addr] = left
                else:
                    del refs[addr]
        if new is not None:
            get = refs.get
            for addr, _state in new.backends:
                refs[addr] = get(addr, 0) + 1

    def problems(self) -> list[str]:
        """Every current problem: per-service errors and frontends two services claim (the
        service whose namespace/name sorts first serves it)."""
        out = [msg for ref in sorted(self.errors) for msg in self.errors[ref]]
        for fe in sorted(self._contested):
            winner, *losers = sorted(self._claims[fe])
            out.extend(
                f"service {ns}/{name}: frontend {fe} is already served by {winner[0]}/{winner[1]}"
                for ns, name in losers
            )
        return out

    def counts(self) -> Mapping[str, int]:
        return {
            "services": len(self._owned),
            "frontends": len(self.frontends),
            "backends": len(self._backend_refs),
        }
