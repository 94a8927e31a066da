"""``weir status | svc list/get | identity list/get | bpf dump``: the operator's inspection CLI.

Only option parsing and rendering live here: the queries are in :mod:`services.ops.collect`, the
computations in the ``*_view`` modules, the renderings in :mod:`services.ops.output`. Every
command takes ``-o table|json`` and, when it reads the bus, ``--nats`` (default: the running
sandbox's NATS, else ``nats://127.0.0.1:4222``). Failures print one line to stderr and exit 1
(cannot reach, not found) or 2 (bad input). Heavy imports (nats, pydantic models, the BPF map
layer) happen inside the commands so ``weir --help`` stays fast.

``weir identity`` was the allocator before it grew subcommands; :func:`identity_app` keeps it so:
the group's callback runs the allocator when no subcommand is given, with the allocator's own
options, so ``weir identity --nats URL`` behaves exactly as before.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from services.ops.output import EXIT_USAGE, Column, Format, OpsError, age, dumps, size, table

Output = Annotated[
    Format, typer.Option("-o", "--output", envvar="WEIR_OUTPUT", help="table or json.")
]
NatsUrl = Annotated[
    str | None,
    typer.Option(
        "--nats",
        envvar="WEIR_NATS_URL",
        help="NATS URL; default: the running sandbox's, else nats://127.0.0.1:4222.",
    ),
]
Doc = dict[str, Any]


def _fail(command: str, exc: OpsError) -> typer.Exit:
    typer.echo(f"weir {command}: {exc}", err=True)
    return typer.Exit(exc.code)


def _query(command: str, nats: str | None, query: Callable[[Any], Awaitable[Doc]]) -> Doc:
    from services.ops.busread import open_reader  # noqa: PLC0415
    from services.ops.target import choose_nats_url, running_sandbox  # noqa: PLC0415

    url, _source = choose_nats_url(nats, None if nats else running_sandbox())

    async def go() -> Doc:
        async with open_reader(url) as reader:
            return await query(reader)

    try:
        return asyncio.run(go())
    except OpsError as exc:
        raise _fail(command, exc) from None


def _emit(doc: Doc, fmt: Format, render: Callable[[Doc, Console], None]) -> None:
    if fmt is Format.JSON:
        typer.echo(dumps(doc))
        return
    render(doc, Console())
    for problem in doc.get("problems", []):
        typer.echo(f"warning: {problem}", err=True)


# -- weir status ---------------------------------------------------------------------------------

NODE_COLUMNS = [
    Column("node", "NODE"),
    Column("applied_k8s", "APPLIED", "right"),
    Column("k8s_lag", "LAG", "right"),
    Column("age", "AGE"),
    Column("maps_text", "MAPS"),
    Column("programs_text", "PROGRAMS"),
    Column("issues", "ISSUES"),
]
STREAM_COLUMNS = [
    Column("name", "STREAM"),
    Column("messages", "MESSAGES", "right"),
    Column("size", "SIZE", "right"),
    Column("first_seq", "FIRST", "right"),
    Column("last_seq", "LAST", "right"),
    Column("consumers", "CONSUMERS", "right"),
]
ERROR_COLUMNS = [
    Column("time", "TIME"),
    Column("object", "OBJECT"),
    Column("field", "FIELD"),
    Column("message", "MESSAGE"),
]


def render_status(doc: Doc, console: Console) -> None:
    from contracts.subjects import STREAM_K8S  # noqa: PLC0415
    from services.ops.status_view import issues_cell, maps_cell, programs_cell  # noqa: PLC0415

    nodes = [
        {
            **n,
            "applied_k8s": n["applied"].get(STREAM_K8S),
            "age": age(n["age_seconds"]),
            "maps_text": maps_cell(n["maps"]),
            "programs_text": programs_cell(n["programs"]),
            "issues": issues_cell(n["errors"], n["flows"]),
        }
        for n in doc["nodes"]
    ]
    console.print(table(f"Nodes (NATS {doc['nats']})", NODE_COLUMNS, nodes))
    if not nodes:
        console.print("no node has published a status yet (is `weir datapath` running?)")
    state = "yes" if doc["converged"] else f"no (lagging: {', '.join(doc['lagging_nodes']) or '-'})"
    idents = "-" if doc["identities"] is None else doc["identities"]
    console.print(f"services: {doc['services']}   identities: {idents}   converged: {state}")
    for n in doc["nodes"]:
        for err in n["errors"][:5]:
            console.print(f"[yellow]{n['node']}: {err}[/yellow]", markup=True, highlight=False)
    streams = [{**s, "size": size(s["bytes"])} for s in doc["streams"]]
    console.print(table("Streams", STREAM_COLUMNS, streams))
    if doc["recent_errors"]:
        console.print(table("Recent validation errors", ERROR_COLUMNS, doc["recent_errors"]))


def status_command(
    output: Output = Format.TABLE,
    nats: NatsUrl = None,
    errors: Annotated[
        int, typer.Option(envvar="WEIR_STATUS_ERRORS", help="How many recent validation errors.")
    ] = 10,
) -> None:
    """Nodes (applied position, lag, map fill, programs), counts, streams, recent errors."""
    from services.ops import collect  # noqa: PLC0415

    if errors < 0:
        raise _fail("status", OpsError(f"--errors: {errors} is negative", EXIT_USAGE))
    doc = _query("status", nats, lambda r: collect.status_document(r, recent=errors))
    _emit(doc, output, render_status)


# -- weir svc ------------------------------------------------------------------------------------

svc_app = typer.Typer(name="svc", help="Services as published on the bus.", no_args_is_help=True)

SVC_COLUMNS = [
    Column("namespace", "NAMESPACE"),
    Column("name", "NAME"),
    Column("type", "TYPE"),
    Column("cluster_ips", "CLUSTER-IPS"),
    Column("ports", "PORTS"),
    Column("ready", "READY", "right"),
]
BACKEND_COLUMNS = [
    Column("frontends", "FRONTENDS"),
    Column("address", "BACKEND"),
    Column("state", "STATE"),
    Column("node", "NODE"),
]


def render_svc_list(doc: Doc, console: Console) -> None:
    rows = [{**r, "ready": f"{r['ready_endpoints']}/{r['endpoints']}"} for r in doc["services"]]
    console.print(table("Services", SVC_COLUMNS, rows))


def _state(b: Doc) -> str:
    return "ready" if b["ready"] else "terminating" if b["terminating"] else "not ready"


def render_svc_get(doc: Doc, console: Console) -> None:
    console.print(
        f"service {doc['namespace']}/{doc['name']}  type {doc['type']}  "
        f"affinity {doc['session_affinity']}  slices: {', '.join(doc['endpointslices']) or '-'}",
        highlight=False,
    )
    rows = []
    for port in doc["port_details"]:
        fronts = port["frontends"] or ["(no frontend)"]
        if not port["backends"]:
            rows.append({"frontends": fronts, "address": "(no backends)"})
        for b in port["backends"]:
            rows.append({**b, "frontends": fronts, "state": _state(b)})
    console.print(table("Frontends and backends", BACKEND_COLUMNS, rows))


@svc_app.command("list")
def svc_list_command(
    namespace: Annotated[
        str | None, typer.Option("-n", "--namespace", envvar="WEIR_NAMESPACE", help="Only this.")
    ] = None,
    output: Output = Format.TABLE,
    nats: NatsUrl = None,
) -> None:
    """Services with type, cluster IPs, ports and ready endpoints."""
    from services.ops import collect  # noqa: PLC0415

    doc = _query("svc list", nats, lambda r: collect.service_list(r, namespace))
    _emit(doc, output, render_svc_list)


@svc_app.command("get")
def svc_get_command(
    service: Annotated[str, typer.Argument(help="NAMESPACE/NAME")],
    output: Output = Format.TABLE,
    nats: NatsUrl = None,
) -> None:
    """One service: its frontends and the backends every node may choose from."""
    from services.ops import collect  # noqa: PLC0415
    from services.ops.svc_view import parse_ref  # noqa: PLC0415

    try:
        ref = parse_ref(service)
    except ValueError as exc:
        raise _fail("svc get", OpsError(str(exc), EXIT_USAGE)) from None
    doc = _query("svc get", nats, lambda r: collect.service_get(r, ref))
    _emit(doc, output, render_svc_get)


# -- weir identity -------------------------------------------------------------------------------

IDENTITY_COLUMNS = [
    Column("id", "ID", "right"),
    Column("labels", "LABELS"),
    Column("state", "STATE"),
    Column("refs", "REFERENCED BY"),
]


def render_identities(doc: Doc, console: Console) -> None:
    from services.ops.identity_view import state  # noqa: PLC0415

    rows = [{**r, "state": state(r)} for r in doc["identities"]]
    console.print(table("Identities", IDENTITY_COLUMNS, rows))


def render_identity(doc: Doc, console: Console) -> None:
    render_identities({"identities": [doc]}, console)
    cols = [Column("ip", "IP"), Column("namespace", "NAMESPACE"), Column("pod", "POD")]
    console.print(table("Endpoints (ipcache)", [*cols, Column("node", "NODE")], doc["endpoints"]))


def identity_list_command(
    output: Output = Format.TABLE,
    nats: NatsUrl = None,
    reserved: Annotated[
        bool, typer.Option(envvar="WEIR_RESERVED", help="Include the reserved identities 0-7.")
    ] = False,
) -> None:
    """Identities in the KV bucket: labels, state and the allocators referencing them."""
    from services.ops import collect  # noqa: PLC0415

    doc = _query("identity list", nats, lambda r: collect.identity_list(r, reserved=reserved))
    _emit(doc, output, render_identities)


def identity_get_command(
    identity: Annotated[str, typer.Argument(help="Numeric identity.")],
    output: Output = Format.TABLE,
    nats: NatsUrl = None,
) -> None:
    """One identity: labels, state, references and the pod IPs mapped to it."""
    from services.ops import collect  # noqa: PLC0415
    from services.ops.identity_view import parse_identity  # noqa: PLC0415

    try:
        ident = parse_identity(identity)
    except ValueError as exc:
        raise _fail("identity get", OpsError(str(exc), EXIT_USAGE)) from None
    doc = _query("identity get", nats, lambda r: collect.identity_get(r, ident))
    _emit(doc, output, render_identity)


def identity_app(allocator: Callable[..., None]) -> typer.Typer:
    """``weir identity``: runs ``allocator`` (with its options) unless a subcommand is given."""
    app = typer.Typer(name="identity", invoke_without_command=True)
    hints = typing.get_type_hints(allocator, include_extras=True)
    params = list(inspect.signature(allocator).parameters.values())

    def callback(ctx: typer.Context, **options: Any) -> None:
        if ctx.invoked_subcommand is None:
            allocator(**options)

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    callback.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [ctx_param.replace(annotation=typer.Context)]
        + [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
    )
    callback.__annotations__ = {"ctx": typer.Context, **hints}
    callback.__doc__ = (allocator.__doc__ or "") + (
        "\n\nWith a subcommand (list, get): inspect the identities instead."
    )
    app.callback()(callback)
    app.command("list")(identity_list_command)
    app.command("get")(identity_get_command)
    return app


# -- weir bpf ------------------------------------------------------------------------------------

bpf_app = typer.Typer(name="bpf", help="Inspect a node's eBPF maps.", no_args_is_help=True)


@bpf_app.command("dump")
def bpf_dump_command(
    map_name: Annotated[
        str,
        typer.Argument(
            metavar="MAP",
            help="frontends | services | backends | revnat | affinity | sk_peer | sk_revnat | "
            "counters | service_ranges | endpoints | ipcache | policy | ct | policy_counters",
        ),
    ],
    node: Annotated[str, typer.Option("--node", envvar="WEIR_NODE", help="Node name.")],
    pin_dir: Annotated[
        str | None,
        typer.Option(
            "--pin-dir",
            envvar="WEIR_PIN_DIR",
            help="The node's pin dir (as given to `weir datapath --pin-dir`); default: the "
            "sandbox node's, else /sys/fs/bpf/weir/<node>.",
        ),
    ] = None,
    output: Output = Format.TABLE,
) -> None:
    """Decoded entries of one pinned map of a node (read directly, no worker needed)."""
    from services.ops import bpfread  # noqa: PLC0415
    from services.ops.bpf_view import MapName  # noqa: PLC0415
    from services.ops.target import choose_pin_dir, running_sandbox  # noqa: PLC0415

    try:
        name = MapName(map_name)
    except ValueError:
        choices = ", ".join(m.value for m in MapName)
        raise _fail(
            "bpf dump", OpsError(f"MAP {map_name!r}: expected one of {choices}", 2)
        ) from None
    base = choose_pin_dir(node, pin_dir, None if pin_dir else running_sandbox())
    try:
        doc = bpfread.dump(base, name, node)
    except OpsError as exc:
        raise _fail("bpf dump", exc) from None

    def render(d: Doc, console: Console) -> None:
        title = f"{d['map']} on {d['node']} ({len(d['entries'])}/{d['capacity']}, {d['pin_dir']})"
        rows = bpfread.table_rows(name, d["entries"])
        console.print(table(title, bpfread.columns(name), rows))

    _emit(doc, output, render)
