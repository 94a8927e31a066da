"""``weir trace KIND/NAMESPACE/NAME``: one change's trace across every process, as a waterfall.

Why this shape: the spans are in JSON-lines files, one per process (``WEIR_TRACE_FILE``); the
command only finds the files, hands them to the pure reader (:mod:`.trace_read`) and prints
(:mod:`.trace_view`). Without ``--files``/``--dir`` it reads the running sandbox's trace
directory, ``<state_dir>/traces`` of the sandbox named in ``<state root>/current``. The sandbox's
``status.json`` is read as plain JSON here (it is documented as such): operator tools and the
sandbox are independent packages of one layer and do not import each other.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_STATE_ROOT = Path("/run/weir/sandbox")  # services.sandbox.state.DEFAULT_STATE_ROOT
TRACE_DIR = "traces"  # the sandbox sets WEIR_TRACE_FILE=<state_dir>/traces/<process>.jsonl


class TraceDirError(ValueError):
    """No span files could be located; the message says what to pass instead."""


def sandbox_trace_dir(state_root: Path) -> Path:
    """``<state_dir>/traces`` of the current sandbox (see the module docstring)."""
    try:
        sandbox_id = (state_root / "current").read_text().strip()
    except OSError:
        raise TraceDirError(
            f"no running sandbox under {state_root} (no 'current' file): pass --dir or --files"
        ) from None
    status_file = state_root / sandbox_id / "status.json"
    try:
        status = json.loads(status_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceDirError(f"{status_file}: cannot read: {exc}; pass --dir or --files") from None
    state_dir = status.get("state_dir") if isinstance(status, dict) else None
    if not isinstance(state_dir, str) or not state_dir:
        raise TraceDirError(f"{status_file}: field 'state_dir' missing; pass --dir or --files")
    return Path(state_dir) / TRACE_DIR


def span_files(files: str, directory: Path | None, state_root: Path) -> list[Path]:
    if files:
        found = [Path(p) for p in sorted(glob.glob(files)) if Path(p).is_file()]
        if not found:
            raise TraceDirError(f"--files {files!r} matches no file")
        return found
    where = directory or sandbox_trace_dir(state_root)
    if not where.is_dir():
        raise TraceDirError(f"trace directory {where} does not exist")
    found = sorted(p for p in where.iterdir() if p.is_file() and p.suffix in (".jsonl", ".json"))
    if not found:
        raise TraceDirError(f"no span files (*.jsonl) in {where}")
    return found


def trace_command(
    obj: Annotated[
        str, typer.Argument(help="KIND/NAMESPACE/NAME (KIND/NAME when cluster-scoped).")
    ],
    last: Annotated[
        int, typer.Option("--last", envvar="WEIR_TRACE_LAST", help="Only the newest N traces.")
    ] = 0,
    files: Annotated[
        str, typer.Option("--files", envvar="WEIR_TRACE_FILES", help="Glob of span files.")
    ] = "",
    directory: Annotated[
        Path | None,
        typer.Option("--dir", envvar="WEIR_TRACE_DIR", help="Directory of *.jsonl span files."),
    ] = None,
    state_root: Annotated[
        Path,
        typer.Option(envvar="WEIR_STATE_ROOT", help="Sandbox state root (default trace dir)."),
    ] = DEFAULT_STATE_ROOT,
    output: Annotated[
        str, typer.Option("-o", "--output", envvar="WEIR_OUTPUT", help="table or json.")
    ] = "table",
) -> None:
    """Show the traces of one object's changes: watcher -> identity -> every node's worker."""
    from rich.console import Console  # noqa: PLC0415

    from services.ops.trace_read import (  # noqa: PLC0415
        TraceInputError,
        load_spans,
        parse_object,
        trace_json,
        traces_for,
    )
    from services.ops.trace_view import waterfall_table  # noqa: PLC0415

    if output not in ("table", "json"):
        typer.echo(f"weir trace: invalid option -o: {output!r} (table or json)", err=True)
        raise typer.Exit(2)
    if last < 0:
        typer.echo(f"weir trace: invalid option --last: {last} (must be >= 0)", err=True)
        raise typer.Exit(2)
    try:
        ref = parse_object(obj)
        paths = span_files(files, directory, state_root)
    except (TraceInputError, TraceDirError) as exc:
        typer.echo(f"weir trace: {exc}", err=True)
        raise typer.Exit(2) from None
    spans, problems = load_spans(paths)
    err = Console(stderr=True)
    for problem in problems[:20]:
        err.print(f"[yellow]skipped[/] {problem}", highlight=False)
    if len(problems) > 20:
        err.print(f"[yellow]... and {len(problems) - 20} more unreadable lines[/]")
    traces = traces_for(spans, ref, last)
    if output == "json":
        doc = {
            "object": str(ref),
            "subject": ref.subject,
            "files": [str(p) for p in paths],
            "traces": [trace_json(t) for t in traces],
        }
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    if not traces:
        err.print(f"no trace mentions {ref} ({ref.subject}) in {len(paths)} span file(s)")
        raise typer.Exit(1)
    console = Console()
    for trace in traces:
        console.print(waterfall_table(trace, str(ref)))
