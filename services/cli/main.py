"""The ``weir`` command: one CLI for every process and every operator tool.

Only wiring lives here. Each service owns its command in ``services/<service>/cli.py`` and keeps
heavy imports (bcc, kubernetes-asyncio) inside the command body, so ``weir --help`` stays fast
and a node that never runs the apiserver never imports it. Every option is also settable as a
``WEIR_*`` environment variable (declared with ``envvar=`` on each option).

Subcommands are registered lazily: ``weir datapath …`` imports and registers only the datapath
command (the module of every other subcommand, e.g. the operator tools' rich tables and the
contracts they render, cost a starting worker ~0.3 s of CPU before it could do anything; a
node's cold sync is timed from spawn). ``weir``, ``weir --help`` and an unknown name register
all of them, so the help lists everything. ``app`` (the full CLI) stays importable for tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

HELP = "Weir: an event-driven eBPF service datapath for Kubernetes."


def _apiserver(app: typer.Typer) -> None:
    from services.apiserver.cli import apiserver_command  # noqa: PLC0415

    app.command("apiserver")(apiserver_command)


def _datapath(app: typer.Typer) -> None:
    from services.datapath.cli import datapath_command  # noqa: PLC0415

    app.command("datapath")(datapath_command)


def _observe(app: typer.Typer) -> None:
    from services.ops.observe_cli import observe_command  # noqa: PLC0415

    app.command("observe")(observe_command)


def _replay(app: typer.Typer) -> None:
    from services.ops.replay_cli import replay_command  # noqa: PLC0415

    app.command("replay")(replay_command)


def _status(app: typer.Typer) -> None:
    from services.ops.inspect_cli import status_command  # noqa: PLC0415

    app.command("status")(status_command)


def _trace(app: typer.Typer) -> None:
    from services.ops.trace_cli import trace_command  # noqa: PLC0415

    app.command("trace")(trace_command)


def _watcher(app: typer.Typer) -> None:
    from services.watcher.cli import watcher_command  # noqa: PLC0415

    app.command("watcher")(watcher_command)


def _bpf(app: typer.Typer) -> None:
    from services.ops.inspect_cli import bpf_app  # noqa: PLC0415

    app.add_typer(bpf_app, name="bpf")


def _identity(app: typer.Typer) -> None:
    from services.identity.cli import identity_command  # noqa: PLC0415
    from services.ops.inspect_cli import identity_app  # noqa: PLC0415

    # `weir identity` runs the allocator; `weir identity list|get` inspects (services/ops).
    app.add_typer(identity_app(identity_command), name="identity")


def _sandbox(app: typer.Typer) -> None:
    from services.sandbox.cli import sandbox_app  # noqa: PLC0415

    app.add_typer(sandbox_app, name="sandbox")


def _svc(app: typer.Typer) -> None:
    from services.ops.inspect_cli import svc_app  # noqa: PLC0415

    app.add_typer(svc_app, name="svc")


# name -> registers it (help lists them in this order)
COMMANDS: dict[str, Callable[[typer.Typer], None]] = {
    "apiserver": _apiserver,
    "datapath": _datapath,
    "observe": _observe,
    "replay": _replay,
    "status": _status,
    "trace": _trace,
    "watcher": _watcher,
    "bpf": _bpf,
    "identity": _identity,
    "sandbox": _sandbox,
    "svc": _svc,
}


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with the subcommand ``only`` registered, or every one (None or unknown)."""
    app = typer.Typer(
        name="weir",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )

    @app.callback()
    def _group() -> None:  # a group even with one command: `weir datapath …` keeps its name
        pass

    for name in [only] if only in COMMANDS else list(COMMANDS):
        COMMANDS[name](app)
    return app


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the full CLI, built on first use (tests drive it with CliRunner)
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    build_app(sys.argv[1] if len(sys.argv) > 1 else None)()


if __name__ == "__main__":
    main()
