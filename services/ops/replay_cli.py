"""``weir replay``: re-run the bus history through the datapath model, event by event.

Why this shape: :func:`replay` is the whole operation as a coroutine over a connected bus (tests
call it in-process and compare its result with live state); the command maps options onto it
and prints. See :mod:`.replay_model` (pure) and :mod:`.replay_source` (bus) for the why of each.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import typer

from services.ops.replay_model import Change, ReplayModel
from services.ops.replay_source import Window, read_history, republish


@dataclass
class ReplayResult:
    model: ReplayModel
    changes: list[Change] = field(default_factory=list)  # the shown ones, in order
    fed: int = 0
    republished: int = 0


async def replay(
    js: object,
    *,
    window: Window,
    nodes: tuple[str, ...] = (),
    at: datetime | None = None,
    nc: object | None = None,
    republish_prefix: str = "",
    identities: bool = True,
) -> ReplayResult:
    """Feed the history (up to ``at`` or the window's end) into a fresh model."""
    from nats.aio.client import Client as NATS  # noqa: PLC0415
    from nats.js import JetStreamContext  # noqa: PLC0415

    assert isinstance(js, JetStreamContext)
    history = await read_history(js, identities=identities)
    model = ReplayModel(nodes, diffs=at is None)
    result = ReplayResult(model)
    first_k8s: datetime | None = None
    shown = []
    for rec in history:
        if window.stop_after(rec) or (at is not None and rec.time > at):
            continue  # identity records may still be in range after a K8s bound: keep going
        if window.from_seq and rec.stream == "WEIR_K8S" and rec.seq >= window.from_seq:
            first_k8s = rec.time if first_k8s is None else first_k8s
        change = model.feed(rec)
        result.fed += 1
        if at is None and window.shows(rec, first_k8s):
            result.changes.append(change)
            shown.append(rec)
    if republish_prefix and nc is not None:
        assert isinstance(nc, NATS)
        result.republished = await republish(nc, republish_prefix, shown)
    return result


def _print_changes(result: ReplayResult, node: str) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.markup import escape  # noqa: PLC0415

    console = Console(highlight=False)
    for ch in result.changes:
        rec = ch.record
        stamp = rec.time.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
        console.print(f"[bold]{rec.stream} #{rec.seq}[/] {stamp} {escape(ch.summary)}")
        if ch.error:
            console.print(f"  [red]error[/] {escape(ch.error)}")
        for name in sorted(set(ch.added) | set(ch.removed)):
            if node and name not in (node, "*"):
                continue
            for line in ch.removed.get(name, []):
                console.print(f"  [red]{escape(name)} - {escape(line)}[/]")
            for line in ch.added.get(name, []):
                console.print(f"  [green]{escape(name)} + {escape(line)}[/]")
    nodes = ", ".join(sorted(result.model.nodes)) or "none (no Node events; pass --node)"
    console.print(f"[dim]{result.fed} messages replayed; nodes: {escape(nodes)}[/]")


def replay_command(
    nats: Annotated[
        str, typer.Option("--nats", envvar="WEIR_NATS_URL", help="NATS URL(s), comma-separated.")
    ] = "nats://127.0.0.1:4222",
    from_seq: Annotated[
        int, typer.Option("--from-seq", envvar="WEIR_FROM_SEQ", help="First WEIR_K8S seq shown.")
    ] = 0,
    to_seq: Annotated[
        int, typer.Option("--to-seq", envvar="WEIR_TO_SEQ", help="Last WEIR_K8S seq replayed.")
    ] = 0,
    since: Annotated[
        str, typer.Option("--since", envvar="WEIR_SINCE", help="Show changes from TIME on.")
    ] = "",
    until: Annotated[
        str, typer.Option("--until", envvar="WEIR_UNTIL", help="Replay up to TIME.")
    ] = "",
    subject: Annotated[
        str, typer.Option("--subject", envvar="WEIR_SUBJECT", help="Show only this filter.")
    ] = "",
    node: Annotated[
        list[str] | None,
        typer.Option("--node", envvar="WEIR_NODE", help="Node(s) to model; default: Node events."),
    ] = None,
    at: Annotated[
        str, typer.Option("--at", envvar="WEIR_AT", help="Print the tables as of TIME.")
    ] = "",
    republish_to: Annotated[
        str,
        typer.Option(
            "--republish", envvar="WEIR_REPUBLISH", help="Re-publish shown messages on SUBJECT.*"
        ),
    ] = "",
    output: Annotated[
        str, typer.Option("-o", "--output", envvar="WEIR_OUTPUT", help="table or json.")
    ] = "table",
) -> None:
    """Replay WEIR_K8S and WEIR_IDENTITY history into each node's model; show what changed.

    TIME is ISO 8601, unix seconds, or a duration ago (30s, 5m, 2h)."""
    from services.ops.replay_source import (  # noqa: PLC0415
        ReplayInputError,
        check_republish,
        parse_time,
    )

    now = datetime.now(UTC)
    try:
        if output not in ("table", "json"):
            raise ReplayInputError(f"-o: {output!r} must be table or json")
        if from_seq < 0 or to_seq < 0 or (to_seq and from_seq > to_seq):
            raise ReplayInputError(f"--from-seq {from_seq} / --to-seq {to_seq}: bad range")
        window = Window(
            from_seq=from_seq,
            to_seq=to_seq,
            since=parse_time(since, "--since", now) if since else None,
            until=parse_time(until, "--until", now) if until else None,
            subject=subject,
        )
        at_time = parse_time(at, "--at", now) if at else None
        prefix = check_republish(republish_to) if republish_to else ""
    except ReplayInputError as exc:
        typer.echo(f"weir replay: invalid option {exc}", err=True)
        raise typer.Exit(2) from None
    nodes = tuple(n for n in (node or []) if n)
    try:
        result = asyncio.run(_run(nats, window, nodes, at_time, prefix))
    except (OSError, ConnectionError, TimeoutError) as exc:
        typer.echo(f"weir replay: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    if at_time is not None:
        tables = result.model.tables()
        if nodes:
            tables = {k: v for k, v in tables.items() if k in nodes or k == "*"}
        if output == "json":
            doc = {"at": at_time.isoformat(), "replayed": result.fed, "tables": tables}
            typer.echo(json.dumps(doc, indent=2, sort_keys=True))
            return
        for name, lines in tables.items():
            typer.echo(f"== {name} at {at_time.isoformat()} ==")
            typer.echo("\n".join(lines))
        return
    if output == "json":
        doc = {
            "replayed": result.fed,
            "nodes": sorted(result.model.nodes),
            "republished": result.republished,
            "changes": [c.to_json() for c in result.changes],
        }
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    _print_changes(result, nodes[0] if len(nodes) == 1 else "")


async def _run(
    url: str, window: Window, nodes: tuple[str, ...], at: datetime | None, prefix: str
) -> ReplayResult:
    from services.common.bus import connect_bus  # noqa: PLC0415

    bus = await connect_bus(url, "weir-replay", max_initial_attempts=3)
    try:
        return await replay(
            bus.js, window=window, nodes=nodes, at=at, nc=bus.nc, republish_prefix=prefix
        )
    finally:
        await bus.close()
