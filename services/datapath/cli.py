"""``weir datapath``: option parsing and signal handling around :func:`run_datapath`.

Everything with behaviour lives in :mod:`services.datapath.worker`, which tests run in-process;
this module maps options (each also a ``WEIR_*`` variable) onto :class:`DatapathSettings`, so
bad values fail at start-up naming the option. The options every process shares (``--nats``,
``--metrics-listen``, ``--log-*``) come from :mod:`services.common.cliopts`. bcc, NATS and the
worker are imported inside the command so ``weir --help`` stays fast.

Start-up order, for a node's time from spawn to ready (issue 6): validate the options (the
settings module imports no bus code), start the loader child (``mapsopen``: the bcc compile runs
on the other core from here on), import nats-py without its websocket transport when no URL
needs it (``services.common.natsimport``), then import the worker and run it. The cyclic GC is
off from the first import to the end of the bootstrap (one bulk phase, ``services.common.gcphase``):
the imports and the desired state are long-lived, and one pass at the end then freezes them.

``--service-cidr`` defaults to 10.96.0.0/12, Kubernetes' common default (kubeadm's
``--service-cidr``); set it to the cluster's ``--service-cluster-ip-range``. A connect to an
address inside it that no Service owns is refused with ECONNREFUSED.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Coroutine
from typing import Annotated, Any

import typer

from services.common.cliopts import DEFAULT_NATS_URL, LogFormat, LogLevel, MetricsListen, NatsUrl
from services.common.gcphase import BULK
from services.datapath.svcranges import DEFAULT_SERVICE_CIDRS


def datapath_command(
    node: Annotated[
        str, typer.Option("--node", envvar="WEIR_NODE", help="Kubernetes node this worker serves.")
    ] = "",
    nats: NatsUrl = DEFAULT_NATS_URL,
    cgroup: Annotated[
        str,
        typer.Option(
            "--cgroup", envvar="WEIR_CGROUP", help="cgroup2 directory to attach the socket LB to."
        ),
    ] = "",
    pin_dir: Annotated[
        str,
        typer.Option(
            "--pin-dir",
            envvar="WEIR_PIN_DIR",
            help="bpffs directory for pinned maps/links; empty: /sys/fs/bpf/weir/<node>.",
        ),
    ] = "",
    netns: Annotated[
        str,
        typer.Option(
            "--netns",
            envvar="WEIR_NETNS",
            help="Network namespace (name or path) of the pods' host-side veths; empty: ours.",
        ),
    ] = "",
    policy: Annotated[
        bool,
        typer.Option(
            "--policy/--no-policy",
            envvar="WEIR_POLICY",
            help="Enforce NetworkPolicy (tc programs on pod veths) and publish flows.",
        ),
    ] = True,
    metrics_listen: MetricsListen = "",
    maps: Annotated[
        str,
        typer.Option(
            "--maps", envvar="WEIR_MAPS", help="bpf (real eBPF maps) or fake (in-memory, tests)."
        ),
    ] = "bpf",
    service_cidr: Annotated[
        list[str] | None,
        typer.Option(
            "--service-cidr",
            envvar="WEIR_SERVICE_CIDR",
            help="Service CIDR (repeatable; the variable takes a space-separated list): "
            "connects to an address inside it that no Service owns are refused. "
            f"Default: {' '.join(DEFAULT_SERVICE_CIDRS)} (Kubernetes' common default).",
        ),
    ] = None,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = "text",
    uninstall: Annotated[
        bool,
        typer.Option(
            "--uninstall",
            envvar="WEIR_UNINSTALL",
            help="Detach the programs (from --cgroup, or everywhere) and remove the pins, then "
            "exit. A stopping worker never does this: its programs and maps outlive it.",
        ),
    ] = False,
) -> None:
    """Program this node's eBPF service and policy maps from the bus; publish its flows."""
    # the imports are long-lived objects: no collections while they load, frozen after
    with BULK.phase(collect=False):
        started = _start(node, nats, cgroup, pin_dir, netns, policy, metrics_listen, maps,
                         service_cidr, log_level, log_format, uninstall)  # fmt: skip
    if started is None:
        return
    try:
        asyncio.run(_serve(started))
    except Exception as exc:  # loader/bus start-up failures: one clear line, exit 1
        typer.echo(f"weir datapath: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None


def _start(
    node: str,
    nats: str,
    cgroup: str,
    pin_dir: str,
    netns: str,
    policy: bool,
    metrics_listen: str,
    maps: str,
    service_cidr: list[str] | None,
    log_level: str,
    log_format: str,
    uninstall: bool,
) -> Coroutine[Any, Any, None] | None:
    """Validate, set up logging, start the loader child, import the worker: its coroutine
    (None after ``--uninstall``)."""
    from pydantic import ValidationError  # noqa: PLC0415

    from services.common.logging import setup_logging  # noqa: PLC0415
    from services.datapath.settings import DatapathSettings  # noqa: PLC0415
    from services.datapath.svcranges import parse_service_cidrs  # noqa: PLC0415

    try:
        cidrs = parse_service_cidrs(service_cidr or DEFAULT_SERVICE_CIDRS)
        settings = DatapathSettings(
            node_name=node,
            nats_url=nats,
            cgroup=cgroup,
            pin_dir=pin_dir,
            netns=netns,
            policy=policy,
            metrics_listen=metrics_listen,
            maps=maps,
            log_level=log_level,
            log_format=log_format,
            service_cidrs=tuple(str(c) for c in cidrs),
        )
        if settings.maps == "bpf" and not settings.cgroup and not uninstall:
            raise ValueError("--cgroup is required with --maps bpf")
    except (ValidationError, ValueError) as exc:
        typer.echo(f"weir datapath: invalid option: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level, settings.log_format)
    if uninstall:
        _uninstall(settings.node_name, pin_dir, cgroup)
        return None
    from services.common.natsimport import import_nats  # noqa: PLC0415
    from services.datapath.mapsopen import open_maps  # noqa: PLC0415

    try:
        opened = open_maps(settings)  # the loader child starts compiling now
    except Exception as exc:
        typer.echo(f"weir datapath: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        import_nats(settings.nats_url)  # before anything imports nats-py (see natsimport)
        from services.common.tracing import setup_tracing  # noqa: PLC0415
        from services.datapath.worker import run_datapath  # noqa: PLC0415

        setup_tracing("weir-datapath", node=settings.node_name)  # WEIR_TRACE_FILE / OTEL_*
    except BaseException:
        opened.close()
        raise
    return run_datapath(settings, opened=opened)


def _uninstall(node: str, pin_dir: str, cgroup: str) -> None:
    from pathlib import Path  # noqa: PLC0415

    from services.datapath import loader  # noqa: PLC0415

    pins = Path(pin_dir) if pin_dir else loader.default_pin_dir(node)
    try:
        removed = loader.uninstall(pins, Path(cgroup) if cgroup else None)
    except OSError as exc:
        typer.echo(f"weir datapath --uninstall: {pins}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"detached from {cgroup or 'every cgroup'}; removed {len(removed)} pin directories")


async def _serve(main: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(main)
    loop = asyncio.get_running_loop()
    owner = os.getpid()

    # Not loop.add_signal_handler: its wakeup fd is inherited by the netns helpers pyroute2
    # forks (tc attach in the node's netns), and a signal sent to a helper would stop us.
    def handler(signum: int, _frame: object) -> None:
        if os.getpid() != owner:  # a forked copy: die of the signal as it would by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        loop.call_soon_threadsafe(task.cancel)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    with contextlib.suppress(asyncio.CancelledError):
        await task
