"""List and watch through kubernetes-asyncio, returning raw camelCase JSON and typed failures.

The watcher talks to the API server only through kubernetes-asyncio's generated API methods and a
kubeconfig (or in-cluster config), exactly as against a real cluster. It deliberately does *not*
use the client's model deserialisation or its ``Watch`` helper:

* normalisation belongs to ``contracts.from_k8s`` on the camelCase object, and an object the
  generated models cannot deserialise (a placeholder string where an int belongs) must become a
  *report*, not an exception that kills the stream; so every call passes
  ``_preload_content=False`` and parses the JSON itself;
* ``Watch`` silently retries a 410 once and hides bookmarks' meaning; the reflector needs to see
  410, bookmarks, a server-side timeout (clean end of stream) and silence as distinct outcomes.

Bodies are parsed by pydantic-core's JSON parser (:func:`parse_json`: a list of 10k objects
in three quarters of the stdlib's time, object keys interned); whatever it rejects goes to the
stdlib's ``json.loads``, so every body reads exactly as ``json.loads`` reads it (lone surrogates,
a byte-order mark) or fails as it fails.

Outcomes are typed: :class:`Gone` (410: relist), :class:`WatchIdle` (no line for ``idle``
seconds: relist), :class:`KubeError` (any other failure: back off, relist). A clean end of the
stream just ends the iterator (resume from the last resourceVersion).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from pydantic_core import from_json

MAX_LINE = 64 * 1024 * 1024


class KubeError(Exception):
    """The API call failed (transport error, non-2xx status, or a garbled response)."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {message}" + (f" (HTTP {status})" if status else ""))
        self.kind = kind
        self.status = status


class Gone(KubeError):
    """410: the resourceVersion we would resume from has been compacted away."""


class WatchIdle(KubeError):
    """The watch produced neither an event nor a bookmark for the idle deadline."""


@dataclass(frozen=True, slots=True)
class Listing:
    items: list[Any]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One line of a watch stream; ``obj`` is whatever JSON the server sent as ``object``."""

    type: str
    obj: Any


class KubeSource(Protocol):
    async def list(self, kind: str) -> Listing: ...

    def watch(
        self, kind: str, resource_version: str, *, timeout_seconds: int, idle: float
    ) -> AsyncIterator[WatchEvent]: ...


ApiCall = Callable[..., Awaitable[Any]]


def _calls(api_client: Any) -> dict[str, ApiCall]:
    from kubernetes_asyncio import client  # noqa: PLC0415 - heavy import, only on use

    core = client.CoreV1Api(api_client)
    return {
        "service": core.list_service_for_all_namespaces,
        "endpointslice": client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces,
        "pod": core.list_pod_for_all_namespaces,
        "namespace": core.list_namespace,
        "node": core.list_node,
        "networkpolicy": client.NetworkingV1Api(api_client).list_network_policy_for_all_namespaces,
    }


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, through pydantic-core's faster parser for what it accepts."""
    try:
        return from_json(body, cache_strings="keys")
    except ValueError:
        return json.loads(body)


def _status_message(body: bytes) -> str:
    try:
        status = json.loads(body)
        return str(status.get("message") or status.get("reason") or body[:200])
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def _error_for(kind: str, status: int, message: str) -> KubeError:
    return (Gone if status == 410 else KubeError)(kind, message, status)


class ApiSource:
    """:class:`KubeSource` over a kubernetes-asyncio ``ApiClient``."""

    def __init__(self, api_client: Any, *, list_timeout: float = 60.0) -> None:
        self._calls = _calls(api_client)
        self._list_timeout = list_timeout

    async def list(self, kind: str) -> Listing:
        call = self._calls[kind]
        try:
            resp = await call(_preload_content=False, _request_timeout=self._list_timeout)
            try:
                body = await resp.read()
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeError(kind, f"list failed: {type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status <= 299:
            raise _error_for(kind, resp.status, _status_message(body))
        try:
            doc = parse_json(body)
            items = doc.get("items") or []
            rv = str(doc["metadata"]["resourceVersion"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KubeError(kind, f"list response is not a {kind} list: {exc}") from exc
        if not isinstance(items, list):
            raise KubeError(kind, "list response: items is not an array")
        return Listing(items=items, resource_version=rv)

    async def watch(
        self, kind: str, resource_version: str, *, timeout_seconds: int, idle: float
    ) -> AsyncIterator[WatchEvent]:
        call = self._calls[kind]
        no_read_limit = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30)
        try:
            resp = await call(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=no_read_limit,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeError(kind, f"watch failed: {type(exc).__name__}: {exc}") from exc
        try:
            if not 200 <= resp.status <= 299:
                raise _error_for(kind, resp.status, _status_message(await resp.read()))
            async for line in _lines(kind, resp.content, idle):
                yield _parse_event(kind, line)
        finally:
            resp.release()


async def _lines(kind: str, content: aiohttp.StreamReader, idle: float) -> AsyncIterator[bytes]:
    """Newline-delimited lines, with an idle deadline per read and no 64 KiB line limit."""
    buf = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(content.readany(), timeout=idle)
        except TimeoutError as exc:
            raise WatchIdle(kind, f"no event or bookmark for {idle:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeError(kind, f"watch stream broke: {type(exc).__name__}: {exc}") from exc
        if not chunk:
            if buf.strip():
                yield bytes(buf)
            return
        buf.extend(chunk)
        while (nl := buf.find(b"\n")) >= 0:
            line, buf = bytes(buf[:nl]), buf[nl + 1 :]
            if line.strip():
                yield line
        if len(buf) > MAX_LINE:
            raise KubeError(kind, f"watch line longer than {MAX_LINE} bytes")


def _parse_event(kind: str, line: bytes) -> WatchEvent:
    try:
        doc = parse_json(line)
        etype, obj = doc["type"], doc["object"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KubeError(kind, f"garbled watch line {line[:120]!r}: {exc}") from exc
    if etype == "ERROR":
        code = obj.get("code") if isinstance(obj, dict) else None
        message = obj.get("message", "") if isinstance(obj, dict) else str(obj)
        raise _error_for(kind, int(code) if isinstance(code, int) else 500, str(message))
    return WatchEvent(type=str(etype), obj=obj)


async def load_api_client(kubeconfig: str | None) -> Any:
    """An ``ApiClient`` from a kubeconfig path, or from the in-cluster service account."""
    from kubernetes_asyncio import client, config  # noqa: PLC0415

    cfg = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration=cfg)
