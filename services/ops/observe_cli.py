"""``weir observe``: flows from WEIR_FLOWS, with ``hubble observe``'s flags.

Only I/O and option parsing live here; filtering and rendering are in :mod:`services.ops.observe`.
History is read with ordered consumers narrowed on the server by subject
(``weir.v1.flows.<node>.<verdict>``): ``--since`` starts at that time (DeliverPolicy
BY_START_TIME); ``--last N`` reads windows backwards from the end of the stream, doubling the
window until N flows matched or the stream's start is reached, so the newest flows of a big
stream cost a few small reads. ``--follow`` then continues after the last message the history
saw, until interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from rich.console import Console

from contracts.subjects import STREAM_FLOWS
from contracts.v1 import Flow
from services.ops.observe import TABLE_COLUMNS, FlowFilter, LastN, compact, parse_since, table_row
from services.ops.output import EXIT_USAGE, OpsError, table

DEFAULT_LAST = 20
IDLE = 2.0  # seconds without a message before a history read gives up waiting


class ObserveFormat(StrEnum):
    COMPACT = "compact"
    JSON = "json"
    TABLE = "table"


class Reading:
    """Counts what did not decode, for one line on stderr at the end."""

    def __init__(self) -> None:
        self.bad = 0
        self.first_bad = ""

    def decode(self, msg: Msg) -> Flow | None:
        try:
            return Flow.model_validate_json(msg.data)
        except ValidationError as exc:
            self.bad += 1
            if not self.first_bad:
                first = exc.errors()[0] if exc.errors() else None
                where = ".".join(str(p) for p in first["loc"]) if first else "<message>"
                self.first_bad = f"{msg.subject}: {where}: {first['msg'] if first else exc}"
            return None


async def read_range(
    js: JetStreamContext,
    subject: str,
    reading: Reading,
    *,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    end_seq: int,
) -> list[tuple[int, Flow]]:
    """Every flow on ``subject`` from ``start_seq`` (or ``start_time``) up to ``end_seq``."""
    if start_time is not None:
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start_time.astimezone(UTC),
        )
    else:
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq or 1
        )
    out: list[tuple[int, Flow]] = []
    done = asyncio.Event()
    progress = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        progress.set()
        if seq > end_seq:
            done.set()
            return
        flow = reading.decode(msg)
        if flow is not None:
            out.append((seq, flow))
        if seq >= end_seq or not msg.metadata.num_pending:
            done.set()

    sub = await js.subscribe(
        subject, stream=STREAM_FLOWS, cb=on_msg, ordered_consumer=True, config=cfg
    )
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            done.set()
        while not done.is_set():
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), IDLE)
            except TimeoutError:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def history(
    js: JetStreamContext, flt: FlowFilter, last: int, reading: Reading
) -> tuple[list[Flow], int]:
    """The flows to print before following, and the stream sequence they end at."""
    info = await js.stream_info(STREAM_FLOWS)
    first, end = int(info.state.first_seq or 1), int(info.state.last_seq or 0)
    if end == 0:
        return [], 0
    subject = flt.subject()
    if flt.since is not None:
        got = await read_range(js, subject, reading, start_time=flt.since, end_seq=end)
        keep = LastN(last)
        for _seq, flow in got:
            if flt.matches(flow):
                keep.add(flow)
        return keep.flows, end
    if last == 0:
        return [], end
    found: list[Flow] = []
    window, hi = max(64, 4 * last), end
    while len(found) < last and hi >= first:
        lo = max(first, hi - window + 1)
        got = await read_range(js, subject, reading, start_seq=lo, end_seq=hi)
        found = [f for s, f in got if lo <= s <= hi and flt.matches(f)] + found
        hi, window = lo - 1, window * 2
    return found[-last:], end


async def follow(
    js: JetStreamContext,
    flt: FlowFilter,
    after: int,
    reading: Reading,
    emit: Callable[[Flow], None],
) -> None:
    """Print matching flows published after ``after`` until cancelled."""

    async def on_msg(msg: Msg) -> None:
        flow = reading.decode(msg)
        if flow is not None and flt.matches(flow):
            emit(flow)

    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
    sub = await js.subscribe(
        flt.subject(), stream=STREAM_FLOWS, cb=on_msg, ordered_consumer=True, config=cfg
    )
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def flow_json(flow: Flow) -> str:
    return json.dumps(json.loads(flow.model_dump_json()), sort_keys=True)


Repeated = list[str] | None


def observe_command(
    follow_: Annotated[
        bool,
        typer.Option(
            "-f", "--follow", envvar="WEIR_OBSERVE_FOLLOW", help="Keep printing new flows."
        ),
    ] = False,
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            envvar="WEIR_OBSERVE_LAST",
            help=f"Newest N flows (default {DEFAULT_LAST}; 0: none).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", envvar="WEIR_OBSERVE_SINCE", help="Flows since 5m / 2h / RFC 3339 time."
        ),
    ] = None,
    verdict: Annotated[
        Repeated,
        typer.Option("--verdict", envvar="WEIR_OBSERVE_VERDICT", help="FORWARDED, DROPPED, ..."),
    ] = None,
    from_pod: Annotated[
        Repeated,
        typer.Option(
            "--from-pod", envvar="WEIR_OBSERVE_FROM_POD", help="Source pod [namespace/]name."
        ),
    ] = None,
    to_pod: Annotated[
        Repeated,
        typer.Option(
            "--to-pod", envvar="WEIR_OBSERVE_TO_POD", help="Destination pod [namespace/]name."
        ),
    ] = None,
    pod: Annotated[
        Repeated, typer.Option("--pod", envvar="WEIR_OBSERVE_POD", help="Pod at either end.")
    ] = None,
    to_service: Annotated[
        Repeated,
        typer.Option(
            "--to-service",
            envvar="WEIR_OBSERVE_TO_SERVICE",
            help="Destination Service namespace/name.",
        ),
    ] = None,
    namespace: Annotated[
        Repeated,
        typer.Option(
            "--namespace", envvar="WEIR_OBSERVE_NAMESPACE", help="Namespace at either end."
        ),
    ] = None,
    identity: Annotated[
        list[int] | None,
        typer.Option("--identity", envvar="WEIR_OBSERVE_IDENTITY", help="Identity at either end."),
    ] = None,
    node: Annotated[
        Repeated, typer.Option("--node", envvar="WEIR_OBSERVE_NODE", help="Node that saw the flow.")
    ] = None,
    output: Annotated[
        ObserveFormat,
        typer.Option("-o", "--output", envvar="WEIR_OUTPUT", help="compact, json or table."),
    ] = ObserveFormat.COMPACT,
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            envvar="WEIR_NATS_URL",
            help="NATS URL; default: the running sandbox's, else nats://127.0.0.1:4222.",
        ),
    ] = None,
) -> None:
    """Show flows (datapath verdicts) like `hubble observe`."""
    from services.ops.busread import open_reader  # noqa: PLC0415
    from services.ops.target import choose_nats_url, running_sandbox  # noqa: PLC0415

    try:
        if last is not None and last < 0:
            raise OpsError(f"--last: {last} is negative", EXIT_USAGE)
        when = parse_since(since, datetime.now(UTC)) if since else None
        flt = FlowFilter.from_flags(
            verdicts=verdict or (),
            from_pods=from_pod or (),
            to_pods=to_pod or (),
            pods=pod or (),
            to_services=to_service or (),
            namespaces=namespace or (),
            identities=identity or (),
            nodes=node or (),
            since=when,
        )
    except OpsError as exc:
        typer.echo(f"weir observe: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    count = last if last is not None else (0 if follow_ and since is None else DEFAULT_LAST)
    if since is not None and last is None:
        count = 0  # everything since then
    url, _ = choose_nats_url(nats, None if nats else running_sandbox())
    console = Console(soft_wrap=True)
    reading = Reading()

    def emit(flow: Flow) -> None:
        if output is ObserveFormat.JSON:
            print(flow_json(flow), flush=True)
        elif output is ObserveFormat.TABLE:
            row = table_row(flow)
            print("  ".join(row[c.key] for c in TABLE_COLUMNS), flush=True)
        else:
            print(compact(flow), flush=True)

    async def go() -> None:
        async with open_reader(url) as reader:
            flows, end = await history(reader.js, flt, count, reading)
            if output is ObserveFormat.TABLE and not follow_:
                console.print(table("Flows", TABLE_COLUMNS, [table_row(f) for f in flows]))
            else:
                for flow in flows:
                    emit(flow)
            if follow_:
                await follow(reader.js, flt, end, reading, emit)

    try:
        asyncio.run(go())
    except OpsError as exc:
        typer.echo(f"weir observe: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except KeyboardInterrupt:
        pass
    finally:
        if reading.bad:
            typer.echo(
                f"weir observe: {reading.bad} messages skipped (not flows); first: "
                f"{reading.first_bad}",
                err=True,
            )
