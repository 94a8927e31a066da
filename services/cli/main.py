"""The ``weir`` command: one CLI for every process and every operator tool.

Only wiring lives here. Each service owns its command in ``services/<service>/cli.py`` and keeps
heavy imports (bcc, kubernetes-asyncio) inside the command body, so ``weir --help`` stays fast
and a node that never runs the apiserver never imports it. Every option is also settable as a
``WEIR_*`` environment variable (declared with ``envvar=`` on each option).
"""

from __future__ import annotations

import typer

from services.apiserver.cli import apiserver_command
from services.datapath.cli import datapath_command
from services.identity.cli import identity_command
from services.ops.inspect_cli import bpf_app, identity_app, status_command, svc_app
from services.ops.observe_cli import observe_command
from services.ops.replay_cli import replay_command
from services.ops.trace_cli import trace_command
from services.sandbox.cli import sandbox_app
from services.watcher.cli import watcher_command

app = typer.Typer(
    name="weir",
    help="Weir: an event-driven eBPF service datapath for Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("apiserver")(apiserver_command)
app.command("datapath")(datapath_command)
app.command("observe")(observe_command)
app.command("replay")(replay_command)
app.command("status")(status_command)
app.command("trace")(trace_command)
app.command("watcher")(watcher_command)
app.add_typer(bpf_app, name="bpf")
# `weir identity` runs the allocator; `weir identity list|get` inspects (services/ops).
app.add_typer(identity_app(identity_command), name="identity")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(svc_app, name="svc")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
