"""CLI options every Weir process shares, declared once.

Each service's command takes the same ``--nats``, ``--metrics-listen``, ``--log-level`` and
``--log-format`` with the same ``WEIR_*`` variables; declaring them here keeps their names, help
texts and defaults identical across ``weir watcher``, ``weir identity``, ``weir datapath`` and the
rest, so an operator's environment file works for every process.
"""

from __future__ import annotations

from typing import Annotated, Final

import typer

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"

NatsUrl = Annotated[
    str, typer.Option("--nats", envvar="WEIR_NATS_URL", help="NATS URL(s), comma-separated.")
]
MetricsListen = Annotated[
    str,
    typer.Option(
        "--metrics-listen",
        envvar="WEIR_METRICS_LISTEN",
        help="HOST:PORT for /metrics /healthz /readyz; empty: off.",
    ),
]
LogLevel = Annotated[
    str, typer.Option("--log-level", envvar="WEIR_LOG_LEVEL", help="Logging level.")
]
LogFormat = Annotated[
    str, typer.Option("--log-format", envvar="WEIR_LOG_FORMAT", help="text or json.")
]
