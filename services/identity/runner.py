"""Process entry of ``weir identity``: settings, bus, ops server, tracing, the service's lifetime.

Why apart from the CLI: tests and the sandbox run :func:`run_identity` in-process with a
:class:`IdentitySettings`; the CLI only maps options onto it. Settings are validated up front
(range, grace, label patterns) so a bad value fails at start-up with a message naming it.
"""

from __future__ import annotations

import logging
import os
import socket

from pydantic import field_validator

from services.common import tracing
from services.common.bus import connect_bus, provision
from services.common.ops import start_ops_server
from services.common.settings import WeirSettings
from services.identity.allocator import Allocator
from services.identity.kv import NatsKV
from services.identity.labels import LabelFilter
from services.identity.reserved import MAX_CLUSTER_ID, MIN_CLUSTER_ID, check_range
from services.identity.service import IdentityService, ServiceConfig

log = logging.getLogger(__name__)


def default_instance() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname() or "identity-0"


class IdentitySettings(WeirSettings):
    instance: str = ""
    gc_grace: float = 30.0
    gc_interval: float = 5.0
    id_min: int = MIN_CLUSTER_ID
    id_max: int = MAX_CLUSTER_ID
    labels: list[str] = []

    @field_validator("gc_grace", "gc_interval")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    def validated(self) -> tuple[LabelFilter, tuple[int, int]]:
        """Parse the label patterns and the range; raises ValueError naming the bad one."""
        return LabelFilter.build(self.labels), check_range(self.id_min, self.id_max)


async def run_identity(settings: IdentitySettings) -> None:
    """Run one allocator instance until cancelled."""
    label_filter, (low, high) = settings.validated()
    instance = settings.instance or default_instance()
    tracing.setup_tracing("weir-identity")
    bus = await connect_bus(settings.nats_url, f"identity-{instance}")
    service: IdentityService | None = None

    def ready() -> bool | str:
        return True if service is not None and service.ready else "bootstrap not complete"

    ops = await start_ops_server(settings.metrics_listen, ready=ready)
    try:
        await provision(bus.js)
        kv = await NatsKV.open(bus.js)
        allocator = Allocator(kv, instance=instance, low=low, high=high, gc_grace=settings.gc_grace)
        service = IdentityService(
            bus,
            allocator,
            ServiceConfig(
                instance=instance, label_filter=label_filter, gc_interval=settings.gc_interval
            ),
        )
        await service.bootstrap()
        await service.run()
    finally:
        if ops is not None:
            await ops.close()
        await bus.close()
