"""The watch response: a chunked stream of JSON lines, exactly as kube-apiserver writes it.

Each line is ``{"type": ..., "object": ...}``. When the queue stays empty for a bookmark interval
(and the client asked for bookmarks) a BOOKMARK carrying only kind, apiVersion and
``metadata.resourceVersion`` is written; because the store feeds queues synchronously, an empty
queue means every event up to the store's current resourceVersion has been sent, so the bookmark is
a safe resume point. A resume point that was compacted away is answered like the real server does
on a watch: HTTP 200, then one ERROR event holding a 410 Expired Status, then end of stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from services.apiserver.resources import Resource
from services.apiserver.status import ApiError
from services.apiserver.store import Event, Store

log = logging.getLogger("weir.apiserver")


def event_line(ev_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": ev_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def bookmark(res: Resource, rv: int) -> dict[str, Any]:
    return {
        "kind": res.kind,
        "apiVersion": res.api_version,
        "metadata": {"resourceVersion": str(rv)},
    }


def _drain(first: Event | None, queue: asyncio.Queue[Event | None]) -> tuple[bytes, bool]:
    """Encode ``first`` and whatever else is queued; True once the end-of-stream marker is seen."""
    lines: list[bytes] = []
    ev = first
    while True:
        if ev is None:
            return b"".join(lines), True
        lines.append(event_line(ev.type, ev.obj))
        if queue.empty():
            return b"".join(lines), False
        ev = queue.get_nowait()


async def serve_watch(
    request: web.Request,
    store: Store,
    res: Resource,
    namespace: str | None,
    since_rv: int | None,
    predicate: Callable[[dict[str, Any]], bool],
    bookmarks: bool,
    bookmark_interval: float,
    timeout_s: float | None,
    on_open: Callable[[int], None],
) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    try:
        w = store.watch(res, namespace, since_rv, predicate)
    except ApiError as err:
        await resp.prepare(request)
        await resp.write(event_line("ERROR", err.body()))
        await resp.write_eof()
        return resp
    on_open(+1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s if timeout_s else None
    try:
        await resp.prepare(request)
        while True:
            wait = bookmark_interval if bookmarks else 3600.0
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            try:
                ev = await asyncio.wait_for(w.queue.get(), timeout=wait)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    break
                if bookmarks:
                    await resp.write(event_line("BOOKMARK", bookmark(res, store.rv)))
                continue
            chunk, done = _drain(ev, w.queue)
            if chunk:
                await resp.write(chunk)
            if done:
                break
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("watch on %s closed by the client", res.plural)
    finally:
        store.stop_watch(w)
        on_open(-1)
    return resp
