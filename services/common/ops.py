"""The operations HTTP server of every Weir process: ``/metrics``, ``/healthz``, ``/readyz``.

Why aiohttp in the process's own event loop: ``/healthz`` answering proves the loop itself is
alive (a blocked loop makes the probe time out, which is exactly what a liveness probe should
see). ``/readyz`` asks the service through a callable that returns ``True`` or a reason string, so
readiness logic stays in the service (e.g. "bootstrap from the bus not complete") and the text
reaches the operator. ``/metrics`` renders the default Prometheus registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from services.common import metrics
from services.common.settings import parse_listen

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], bool | str]


def readiness(result: bool | str) -> tuple[bool, str]:
    """Interpret a ready() result: ``True`` / non-empty "ok" -> ready; otherwise the reason."""
    if result is True:
        return True, "ok"
    if isinstance(result, str):
        return (True, "ok") if result.strip().lower() == "ok" else (False, result or "not ready")
    return False, "not ready"


@dataclass
class OpsServer:
    """A running ops server; ``port`` is the bound one (useful with port 0)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


def make_app(ready: ReadyCheck) -> web.Application:
    async def metrics_handler(_req: web.Request) -> web.Response:
        body, content_type = metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    async def healthz(_req: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_req: web.Request) -> web.Response:
        try:
            ok, reason = readiness(ready())
        except Exception as exc:  # a broken check means "not ready", with the reason shown
            ok, reason = False, f"readiness check failed: {exc!r}"
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_ops_server(listen: str, *, ready: ReadyCheck) -> OpsServer | None:
    """Serve the ops endpoints on ``listen`` (``HOST:PORT``); ``""`` -> None (disabled)."""
    addr = parse_listen(listen)
    if addr is None:
        return None
    host, port = addr
    runner = web.AppRunner(make_app(ready), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"ops server cannot listen on {listen!r}: {exc.strerror}") from exc
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    log.info("ops server listening on %s:%d", host, bound)
    return OpsServer(runner=runner, host=host, port=bound)
