"""The aiohttp application: REST paths -> registry calls, Status bodies, discovery, admin.

Routing is one catch-all handler that parses ``/api/v1/...`` and ``/apis/<g>/<v>/...`` itself,
because the Kubernetes path grammar is ambiguous for a route table (``/api/v1/namespaces/x/pods``
vs a namespace's subresource). All semantics live in :mod:`registry` and :mod:`store`; this module
only decodes requests, encodes responses and counts them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from services.apiserver import openapi, resources
from services.apiserver.metrics import ApiMetrics
from services.apiserver.registry import Registry
from services.apiserver.resources import STATUS_SUBRESOURCE, Resource
from services.apiserver.selectors import parse_field_selector, parse_label_selector
from services.apiserver.status import ApiError, bad_request, method_not_allowed
from services.apiserver.store import Store, parse_rv
from services.apiserver.tables import to_table, wants_table
from services.apiserver.watchstream import serve_watch

log = logging.getLogger("weir.apiserver")

VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-weir",
    "gitCommit": "weir",
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass
class HttpSettings:
    bookmark_interval: float = 1.0


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


def _error(err: ApiError) -> web.Response:
    return _json(err.body(), err.code)


@dataclass
class Target:
    res: Resource
    namespace: str | None
    name: str | None
    sub: str | None


def parse_path(path: str) -> Target | dict[str, Any] | None:
    """A resource target, a discovery document, or None (404)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        if len(parts) == 1:
            return resources.api_versions()
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"]:
        if len(parts) == 1:
            return resources.api_group_list()
        if len(parts) == 2:
            return resources.api_group(parts[1])
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return resources.api_resource_list(group, version)
    ns: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        inner = resources.lookup(group, version, rest[2])
        if inner is not None and inner.namespaced:
            ns, rest = rest[1], rest[2:]
    res = resources.lookup(group, version, rest[0])
    if res is None or len(rest) > 3:
        return None
    if res.namespaced is False and ns is not None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and (sub != "status" or res.plural not in STATUS_SUBRESOURCE):
        return None
    return Target(res, ns, name, sub)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class ApiHandler:
    def __init__(self, registry: Registry, metrics: ApiMetrics, settings: HttpSettings) -> None:
        self.registry = registry
        self.store: Store = registry.store
        self.metrics = metrics
        self.settings = settings

    async def handle(self, request: web.Request) -> web.StreamResponse:
        verb, resource = request.method.lower(), ""
        try:
            target = parse_path(request.path)
            if target is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if isinstance(target, dict):
                if request.method != "GET":
                    raise method_not_allowed()
                return _json(target)
            resource = target.res.plural + (f"/{target.sub}" if target.sub else "")
            verb = self._verb(request, target)
            resp = await self._dispatch(request, target, verb)
        except ApiError as err:
            resp = _error(err)
        self.metrics.requests.labels(verb, resource, str(resp.status)).inc()
        self.metrics.objects.set(self.store.rv)
        log.debug("%s %s -> %d", request.method, request.path_qs, resp.status)
        return resp

    def _verb(self, request: web.Request, t: Target) -> str:
        m = request.method
        if m == "GET":
            if t.name is None:
                return "watch" if _truthy(request.query.get("watch")) else "list"
            return "get"
        if m == "DELETE" and t.name is None:
            return "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            m, m.lower()
        )

    async def _dispatch(self, request: web.Request, t: Target, verb: str) -> web.StreamResponse:
        q = request.query
        reg, res = self.registry, t.res
        if t.name is None:
            if verb == "list":
                return self._list(request, t)
            if verb == "watch":
                return await self._watch(request, t)
            if verb == "create":
                if res.namespaced and t.namespace is None:
                    raise method_not_allowed()
                obj = reg.create(res, t.namespace, await self._body(request))
                return _json(obj, 201)
            if verb == "deletecollection":  # every object the selectors match
                labels = parse_label_selector(q.get("labelSelector"))
                fields = parse_field_selector(q.get("fieldSelector"), res.plural)
                objs, _ = self.store.list(res, t.namespace)
                gone = [
                    reg.delete(res, o["metadata"].get("namespace"), o["metadata"]["name"])
                    for o in objs
                    if labels(o) and fields(o)
                ]
                body = {
                    "kind": f"{res.kind}List",
                    "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(self.store.rv)},
                    "items": gone,
                }
                return _json(body)
            raise method_not_allowed()
        if verb == "get":
            rv = parse_rv(q.get("resourceVersion"))
            if rv:
                self.store.check_not_compacted(rv, "too old resource version")
            return self._respond(request, t, self.store.get(res, t.namespace or "", t.name))
        if verb == "update":
            body = await self._body(request)
            if t.sub == "status":
                return _json(reg.replace_status(res, t.namespace, t.name, body))
            return _json(reg.replace(res, t.namespace, t.name, body))
        if verb == "patch":
            ctype = request.headers.get("Content-Type", "")
            body = await self._body(request)
            if t.sub == "status":
                return _json(reg.patch_status(res, t.namespace, t.name, ctype, body))
            return _json(reg.patch(res, t.namespace, t.name, ctype, body))
        if verb == "delete" and t.sub is None:
            expected = None
            if request.can_read_body:
                opts = await self._body(request, allow_empty=True)
                if isinstance(opts, dict):
                    expected = (opts.get("preconditions") or {}).get("resourceVersion")
            return _json(reg.delete(res, t.namespace, t.name, expected))
        raise method_not_allowed()

    def _list(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        rv = parse_rv(q.get("resourceVersion"))
        if rv:
            self.store.check_not_compacted(
                rv, "The resourceVersion for the provided list is too old."
            )
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), t.res.plural)
        objs, list_rv = self.store.list(t.res, t.namespace)
        items = [o for o in objs if labels(o) and fields(o)]
        body = {
            "kind": f"{t.res.kind}List",
            "apiVersion": t.res.api_version,
            "metadata": {"resourceVersion": str(list_rv)},
            "items": items,
        }
        return self._respond(request, t, body)

    def _respond(self, request: web.Request, t: Target, body: dict[str, Any]) -> web.Response:
        if wants_table(request.headers.get("Accept", "")):
            return _json(to_table(t.res, body))
        return _json(body)

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        since = parse_rv(q.get("resourceVersion"))
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), t.res.plural)
        timeout_s = q.get("timeoutSeconds")
        try:
            timeout = float(timeout_s) if timeout_s else None
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds: {timeout_s!r}") from None
        return await serve_watch(
            request,
            self.store,
            t.res,
            t.namespace,
            since,
            lambda o: labels(o) and fields(o),
            _truthy(q.get("allowWatchBookmarks")),
            self.settings.bookmark_interval,
            timeout,
            self.metrics.watches.inc,
        )

    async def _body(self, request: web.Request, allow_empty: bool = False) -> Any:
        raw = await request.read()
        if not raw.strip():
            if allow_empty:
                return None
            raise bad_request("the request has no body")
        ctype = request.headers.get("Content-Type", "application/json").lower()
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"the request body could not be decoded: {exc}") from None


def build_app(registry: Registry, metrics: ApiMetrics, settings: HttpSettings) -> web.Application:
    handler = ApiHandler(registry, metrics, settings)

    async def version(_r: web.Request) -> web.Response:
        return _json(VERSION_INFO)

    async def health(_r: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def prom(_r: web.Request) -> web.Response:
        metrics.objects.set(registry.store.rv)
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    async def compact(request: web.Request) -> web.Response:
        keep_s = request.query.get("keep", "0")
        if not keep_s.isdigit():
            return _error(bad_request(f"keep must be a non-negative integer, not {keep_s!r}"))
        rv = registry.store.compact(int(keep_s))
        return _json(
            {"compactedResourceVersion": str(rv), "resourceVersion": str(registry.store.rv)}
        )

    async def openapi_v3(request: web.Request) -> web.Response:
        tail = request.match_info.get("tail", "").strip("/")
        doc = openapi.root_index() if not tail else openapi.group_version_doc(tail)
        if doc is None:
            return _error(
                ApiError(404, "NotFound", "the server could not find the requested resource")
            )
        return _json(doc)

    async def openapi_missing(_r: web.Request) -> web.Response:
        return _error(ApiError(404, "NotFound", "the server could not find the requested resource"))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/version", version)
    for path in ("/healthz", "/readyz", "/livez"):
        app.router.add_get(path, health)
    app.router.add_get("/metrics", prom)
    app.router.add_post("/weir/compact", compact)
    app.router.add_get("/openapi/v3", openapi_v3)
    app.router.add_get("/openapi/v3/{tail:.*}", openapi_v3)
    app.router.add_get("/openapi/{tail:.*}", openapi_missing)
    app.router.add_route("*", "/api", handler.handle)
    app.router.add_route("*", "/apis", handler.handle)
    app.router.add_route("*", "/api/{tail:.*}", handler.handle)
    app.router.add_route("*", "/apis/{tail:.*}", handler.handle)
    return app
