"""The operations HTTP server of every Weir process: ``/metrics``, ``/healthz``, ``/readyz``.

Why a server in the process's own event loop: ``/healthz`` answering proves the loop itself is
alive (a blocked loop makes the probe time out, which is exactly what a liveness probe should
see). ``/readyz`` asks the service through a callable that returns ``True`` or a reason string, so
readiness logic stays in the service (e.g. "bootstrap from the bus not complete") and the text
reaches the operator. ``/metrics`` renders the default Prometheus registry.

Why plain ``asyncio`` streams and not aiohttp's web server: three fixed GET routes need no
framework, and importing ``aiohttp.web`` cost a starting process ~0.1 s of CPU (with aiohttp
itself ~0.2 s) before it could do anything; a datapath worker's cold sync is measured from
spawn (issue 6). Each answer is also cheaper (a probe polled every few milliseconds during a
bootstrap competes with it for the GIL). The parsing here is deliberately small: one request at
a time per connection (HTTP/1.1 keep-alive, ``Connection: close`` and HTTP/1.0 honoured), a
bounded request head, any body read and discarded, ``GET``/``HEAD`` only; anything else gets a
plain 4xx/5xx answer and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common import metrics
from services.common.settings import parse_listen

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], bool | str]

MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 64 * 1024  # a GET has none; anything bigger is refused
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may sit idle
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
}


def readiness(result: bool | str) -> tuple[bool, str]:
    """Interpret a ready() result: ``True`` / non-empty "ok" -> ready; otherwise the reason."""
    if result is True:
        return True, "ok"
    if isinstance(result, str):
        return (True, "ok") if result.strip().lower() == "ok" else (False, result or "not ready")
    return False, "not ready"


def route(method: str, path: str, ready: ReadyCheck) -> tuple[int, str, bytes]:
    """(status, content type, body) for one request (pure but for the callbacks it reads)."""
    if path not in ("/metrics", "/healthz", "/readyz"):
        return 404, _TEXT, b"not found\n"
    if method not in ("GET", "HEAD"):
        return 405, _TEXT, b"method not allowed\n"
    if path == "/healthz":
        return 200, _TEXT, b"ok\n"
    if path == "/metrics":
        body, content_type = metrics.render()
        return 200, content_type, body
    try:
        ok, reason = readiness(ready())
    except Exception as exc:  # a broken check means "not ready", with the reason shown
        ok, reason = False, f"readiness check failed: {exc!r}"
    return (200 if ok else 503), _TEXT, (reason + "\n").encode()


class BadRequestError(Exception):
    """A request this server does not take; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    keep_alive: bool
    body_length: int


def parse_head(head: bytes) -> Request:
    """Request line and headers (up to the blank line) -> :class:`Request`."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequestError(400, f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequestError(400, f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequestError(501, "chunked request bodies are not supported")
    length_s = headers.get("content-length", "0")
    if not length_s.isdigit():
        raise BadRequestError(400, f"bad Content-Length {length_s[:20]!r}")
    if int(length_s) > MAX_BODY:
        raise BadRequestError(413, f"request body of {length_s} bytes")
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method, target.split("?", 1)[0], keep, int(length_s))


def response(status: int, content_type: str, body: bytes, *, keep: bool, head: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if not keep:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


@dataclass
class OpsServer:
    """A running ops server; ``port`` is the bound one (useful with port 0)."""

    server: asyncio.Server
    host: str
    port: int
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        self.server.close()
        for writer in list(self._writers):  # idle keep-alive connections end with the server
            writer.close()
        await self.server.wait_closed()


async def _serve(
    ready: ReadyCheck,
    writers: set[asyncio.StreamWriter],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    writers.add(writer)
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except asyncio.LimitOverrunError:
                writer.write(response(431, _TEXT, b"request head too large\n", keep=False,
                                      head=False))  # fmt: skip
                return
            try:
                req = parse_head(head[:-4])
                if req.body_length:
                    await reader.readexactly(req.body_length)
            except BadRequestError as exc:
                log.debug("ops server: %s", exc)
                body = f"{exc}\n".encode()
                writer.write(response(exc.status, _TEXT, body, keep=False, head=False))
                return
            status, content_type, body = route(req.method, req.path, ready)
            writer.write(response(status, content_type, body, keep=req.keep_alive,
                                  head=req.method == "HEAD"))  # fmt: skip
            await writer.drain()
            if not req.keep_alive:
                return
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        return  # the client went away or idled out
    finally:
        writers.discard(writer)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def start_ops_server(listen: str, *, ready: ReadyCheck) -> OpsServer | None:
    """Serve the ops endpoints on ``listen`` (``HOST:PORT``); ``""`` -> None (disabled)."""
    addr = parse_listen(listen)
    if addr is None:
        return None
    host, port = addr
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve(ready, writers, reader, writer)

    try:
        server = await asyncio.start_server(serve, host, port, limit=MAX_HEAD)
    except OSError as exc:
        raise OSError(exc.errno, f"ops server cannot listen on {listen!r}: {exc.strerror}") from exc
    bound = int(server.sockets[0].getsockname()[1]) if server.sockets else port
    log.info("ops server listening on %s:%d", host, bound)
    return OpsServer(server=server, host=host, port=bound, _writers=writers)
