"""``weir identity``: option parsing and signal handling around :func:`run_identity`.

Everything with behaviour lives in :mod:`services.identity.service` (tests run it in-process);
this module maps options (each also a ``WEIR_*`` variable) onto :class:`IdentitySettings`, so a
bad value fails at start-up with a message naming it. Bus code is imported inside the command so
``weir --help`` stays fast.
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


def identity_command(
    nats: NatsUrl = DEFAULT_NATS_URL,
    metrics_listen: MetricsListen = "",
    instance: Annotated[
        str,
        typer.Option(
            envvar="WEIR_INSTANCE",
            help="Stable name of this allocator (its durable consumer and KV refs); default host.",
        ),
    ] = "",
    gc_grace: Annotated[
        float,
        typer.Option(envvar="WEIR_GC_GRACE", help="Seconds an unused identity is kept."),
    ] = 30.0,
    gc_interval: Annotated[
        float, typer.Option(envvar="WEIR_GC_INTERVAL", help="Seconds between GC rounds.")
    ] = 5.0,
    id_min: Annotated[
        int, typer.Option(envvar="WEIR_ID_MIN", help="Lowest allocatable identity (>= 256).")
    ] = 256,
    id_max: Annotated[
        int, typer.Option(envvar="WEIR_ID_MAX", help="Highest allocatable identity (<= 65535).")
    ] = 65535,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            envvar="WEIR_LABELS",
            help="Cilium-style label pattern [source:][!]regex (repeatable; ! excludes).",
        ),
    ] = None,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "text",
) -> None:
    """Allocate numeric security identities for pods; publish Identity and IPCache events."""
    from pydantic import ValidationError  # noqa: PLC0415

    from services.common.logging import setup_logging  # noqa: PLC0415
    from services.identity.runner import IdentitySettings  # noqa: PLC0415

    try:
        settings = IdentitySettings(
            nats_url=nats,
            metrics_listen=metrics_listen,
            instance=instance,
            gc_grace=gc_grace,
            gc_interval=gc_interval,
            id_min=id_min,
            id_max=id_max,
            labels=list(label or []),
            log_level=log_level,
            log_format=log_format,
        )
        settings.validated()
    except (ValidationError, ValueError) as exc:
        typer.echo(f"weir identity: invalid option: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_serve(settings))
    except (OSError, ConnectionError) as exc:
        typer.echo(f"weir identity: {exc}", err=True)
        raise typer.Exit(1) from None


async def _serve(settings: object) -> None:
    from services.identity.runner import IdentitySettings, run_identity  # noqa: PLC0415

    assert isinstance(settings, IdentitySettings)
    task = asyncio.create_task(run_identity(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
