"""Connecting to NATS: one client per process that never gives up once connected.

Why this shape: a Weir process outlives NATS restarts, so after the first connect the client
reconnects forever with capped exponential backoff (:func:`reconnect_delay`, pure), and every
disconnect/reconnect/error is logged and counted instead of being fatal. The *first* connect is
retried here (so a service may start before NATS) and may be bounded, so an operator command
fails with a clear error instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.client import Server
from nats.js import JetStreamContext

from services.common import metrics

log = logging.getLogger(__name__)


def reconnect_delay(attempt: int, *, base: float = 0.05, cap: float = 2.0) -> float:
    """Capped exponential backoff with +-20 % jitter for reconnect/retry ``attempt`` (0-based)."""
    delay = min(cap, base * (2 ** min(attempt, 30)))
    return float(delay * random.uniform(0.8, 1.2))


@dataclass
class Bus:
    """A connected NATS client and its JetStream context."""

    nc: NATS
    js: JetStreamContext
    name: str

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # draining a dead connection: close it instead
                await self.nc.close()


async def connect_bus(
    url: str,
    name: str,
    *,
    max_initial_attempts: int | None = None,
    js_timeout: float = 5.0,
) -> Bus:
    """Connect to NATS (retrying the first connect, forever unless bounded) and open JetStream."""
    attempts = [0]

    async def on_error(exc: Exception) -> None:
        metrics.BUS_ERRORS.labels(name).inc()
        log.warning("bus %s: %s: %s", name, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        metrics.BUS_DISCONNECTS.labels(name).inc()
        log.warning("bus %s: disconnected from NATS", name)

    async def on_reconnected() -> None:
        attempts[0] = 0
        metrics.BUS_RECONNECTS.labels(name).inc()
        log.info("bus %s: reconnected to NATS", name)

    async def on_closed() -> None:
        log.info("bus %s: connection closed", name)

    def pick_server(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        delay = reconnect_delay(attempts[0])
        attempts[0] += 1
        return (servers[0] if servers else None), delay

    tries = 0
    while True:
        try:
            nc = await nats.connect(
                url,
                name=name,
                # The first connect gives up after two tries so that the loop here owns its
                # backoff and bound; once connected, the client reconnects forever.
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.05,
                reconnect_to_server_handler=pick_server,
                connect_timeout=2,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
            )
            nc.options["max_reconnect_attempts"] = -1  # read by the client at each disconnect
            break
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            tries += 1
            if max_initial_attempts is not None and tries >= max_initial_attempts:
                raise ConnectionError(f"cannot connect to NATS at {url}: {exc}") from exc
            delay = reconnect_delay(tries - 1)
            log.warning("bus %s: cannot connect to %s (%s); retry in %.2fs", name, url, exc, delay)
            await asyncio.sleep(delay)
    return Bus(nc=nc, js=nc.jetstream(timeout=js_timeout), name=name)
