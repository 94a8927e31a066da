"""``weir apiserver``: run the Kubernetes API stand-in until interrupted.

Only option parsing and printing live here; everything else is :func:`start_apiserver`, which tests
call in-process. Heavy imports (aiohttp) happen inside the command so ``weir --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from services.common.cliopts import LogFormat


def apiserver_command(
    listen: Annotated[
        str,
        typer.Option(envvar="WEIR_LISTEN", help="HOST:PORT to serve on; port 0 picks a free port."),
    ] = "127.0.0.1:6443",
    kubeconfig_out: Annotated[
        Path | None,
        typer.Option(envvar="WEIR_KUBECONFIG_OUT", help="Write a kubeconfig for this server here."),
    ] = None,
    manifests: Annotated[
        list[Path] | None,
        typer.Option(
            envvar="WEIR_MANIFESTS",
            help="YAML/JSON files or directories to create at start (repeatable).",
        ),
    ] = None,
    service_cidr: Annotated[
        str, typer.Option(envvar="WEIR_SERVICE_CIDR", help="CIDR ClusterIPs are allocated from.")
    ] = "10.96.0.0/16",
    bookmark_interval: Annotated[
        float,
        typer.Option(envvar="WEIR_BOOKMARK_INTERVAL", help="Seconds between watch bookmarks."),
    ] = 1.0,
    retain_events: Annotated[
        int,
        typer.Option(
            envvar="WEIR_RETAIN_EVENTS",
            help="Events kept for watch resume; older resourceVersions get 410 Expired.",
        ),
    ] = 10_000,
    accept_invalid: Annotated[
        bool,
        typer.Option(
            envvar="WEIR_ACCEPT_INVALID",
            help="Skip deep contract validation (to inject malformed objects in tests).",
        ),
    ] = False,
    log_level: Annotated[
        str, typer.Option(envvar="WEIR_LOG_LEVEL", help="Logging level (DEBUG logs requests).")
    ] = "INFO",
    log_format: LogFormat = "text",
) -> None:
    """Run the Kubernetes API stand-in (core/v1, discovery.k8s.io/v1, networking.k8s.io/v1)."""
    from services.apiserver.manifests import ManifestError  # noqa: PLC0415
    from services.apiserver.server import ApiServerConfig  # noqa: PLC0415
    from services.common.logging import setup_logging  # noqa: PLC0415

    try:
        setup_logging(log_level, log_format)
        host, port = ApiServerConfig.parse_listen(listen)
        config = ApiServerConfig(
            host=host,
            port=port,
            kubeconfig_out=kubeconfig_out,
            manifests=list(manifests or []),
            service_cidr=service_cidr,
            bookmark_interval=bookmark_interval,
            retain_events=retain_events,
            accept_invalid=accept_invalid,
        )
        if bookmark_interval <= 0:
            raise ValueError("--bookmark-interval must be > 0")
        if retain_events < 0:
            raise ValueError("--retain-events must be >= 0")
        asyncio.run(_serve(config))
    except (ValueError, ManifestError, OSError) as exc:
        typer.echo(f"weir apiserver: {exc}", err=True)
        raise typer.Exit(2) from None


async def _serve(config: object) -> None:
    from services.apiserver.server import ApiServerConfig, start_apiserver  # noqa: PLC0415

    assert isinstance(config, ApiServerConfig)
    server = await start_apiserver(config)
    typer.echo(f"weir apiserver listening on {server.url}")
    if server.kubeconfig is not None:
        typer.echo(f"kubeconfig written to {server.kubeconfig}")
        typer.echo(f"  try: kubectl --kubeconfig {server.kubeconfig} get namespaces")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
