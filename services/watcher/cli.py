"""``weir watcher``: option parsing and signal handling around :func:`run_watcher`.

Everything with behaviour lives in :mod:`services.watcher.service`, which tests run in-process;
this module only maps options (each also a ``WEIR_*`` variable) onto :class:`WatcherSettings`,
so bad values fail at start-up with a message naming the option. kubernetes-asyncio and the bus
are imported inside the command so ``weir --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from services.common.cliopts import (
    DEFAULT_NATS_URL,
    LogFormat,
    LogLevel,
    MetricsListen,
    NatsUrl,
)


def watcher_command(
    nats: NatsUrl = DEFAULT_NATS_URL,
    kubeconfig: Annotated[
        str,
        typer.Option(envvar="WEIR_KUBECONFIG", help="kubeconfig path; empty: in-cluster config."),
    ] = "",
    metrics_listen: MetricsListen = "",
    id: Annotated[
        str,
        typer.Option(envvar="WEIR_ID", help="This watcher's name in the leader lease (host-pid)."),
    ] = "",
    watch_timeout: Annotated[
        int, typer.Option(envvar="WEIR_WATCH_TIMEOUT", help="Server-side watch timeout, seconds.")
    ] = 300,
    watch_idle: Annotated[
        float,
        typer.Option(
            envvar="WEIR_WATCH_IDLE", help="Relist after this many seconds without event/bookmark."
        ),
    ] = 60.0,
    lease_ttl: Annotated[
        float, typer.Option(envvar="WEIR_LEASE_TTL", help="Leader lease lifetime, seconds.")
    ] = 3.0,
    lease_renew: Annotated[
        float, typer.Option(envvar="WEIR_LEASE_RENEW", help="Leader lease renew period, seconds.")
    ] = 1.0,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "text",
) -> None:
    """Publish Kubernetes objects to the bus (list+watch; one leader among replicas)."""
    from pydantic import ValidationError  # noqa: PLC0415

    from services.common.logging import setup_logging  # noqa: PLC0415
    from services.common.tracing import setup_tracing  # noqa: PLC0415
    from services.watcher.service import WatcherSettings  # noqa: PLC0415

    try:
        settings = WatcherSettings(
            nats_url=nats,
            kubeconfig=kubeconfig,
            metrics_listen=metrics_listen,
            id=id,
            watch_timeout=watch_timeout,
            watch_idle=watch_idle,
            lease_ttl=lease_ttl,
            lease_renew=lease_renew,
            log_level=log_level,
            log_format=log_format,
        )
        settings.timing()
    except (ValidationError, ValueError) as exc:
        typer.echo(f"weir watcher: invalid option: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing("weir-watcher")  # WEIR_TRACE_FILE / OTEL_*
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        typer.echo(f"weir watcher: {exc}", err=True)
        raise typer.Exit(1) from None


async def _serve(settings: object) -> None:
    from services.watcher.service import WatcherSettings, run_watcher  # noqa: PLC0415

    assert isinstance(settings, WatcherSettings)
    task = asyncio.create_task(run_watcher(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
