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

import importlib
import sys
from collections.abc import Callable

import typer

HELP = "Weir: an event-driven eBPF service datapath for Kubernetes."


Register = Callable[[typer.Typer], None]


def _command(name: str, module: str, attribute: str) -> tuple[str, Register]:
    """A subcommand whose function ``module.attribute`` is imported only when it is registered."""

    def register(app: typer.Typer) -> None:
        app.command(name)(getattr(importlib.import_module(module), attribute))

    return name, register


def _group(name: str, module: str, attribute: str) -> tuple[str, Register]:
    """A typer group (``weir bpf …``) imported only when it is registered."""

    def register(app: typer.Typer) -> None:
        app.add_typer(getattr(importlib.import_module(module), attribute), name=name)

    return name, register


def _identity(app: typer.Typer) -> None:
    from services.identity.cli import identity_command  # noqa: PLC0415
    from services.ops.inspect_cli import identity_app  # noqa: PLC0415

    # `weir identity` runs the allocator; `weir identity list|get` inspects (services/ops).
    app.add_typer(identity_app(identity_command), name="identity")


# name -> registers it (help lists them in this order)
COMMANDS: dict[str, Register] = dict(
    [
        _command("apiserver", "services.apiserver.cli", "apiserver_command"),
        _command("datapath", "services.datapath.cli", "datapath_command"),
        _command("observe", "services.ops.observe_cli", "observe_command"),
        _command("replay", "services.ops.replay_cli", "replay_command"),
        _command("status", "services.ops.inspect_cli", "status_command"),
        _command("trace", "services.ops.trace_cli", "trace_command"),
        _command("watcher", "services.watcher.cli", "watcher_command"),
        _group("bpf", "services.ops.inspect_cli", "bpf_app"),
        ("identity", _identity),
        _group("sandbox", "services.sandbox.cli", "sandbox_app"),
        _group("svc", "services.ops.inspect_cli", "svc_app"),
    ]
)


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
