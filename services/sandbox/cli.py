"""``weir sandbox up | down | status | exec`` (and the internal ``serve``): the user's handle.

``up`` does not run the cluster itself: it spawns the supervisor (``weir sandbox serve``,
detached with setsid, output in the state dir) and only watches ``status.json`` until it says
ready, showing what it still waits for. So the sandbox outlives the terminal, and ``down``,
``status`` and ``exec`` work from any shell by reading the files the supervisor and the state
layer keep under ``/run/weir/sandbox/<id>/``. ``down`` stops the supervisor (which tears down)
and then runs ``teardown_all`` anyway, so it also cleans up after a supervisor that crashed or
was SIGKILLed; it is idempotent.

Heavy imports stay inside the commands so ``weir --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from services.sandbox.runinfo import SandboxStatus, read_current, read_status, write_current
from services.sandbox.state import DEFAULT_STATE_ROOT

sandbox_app = typer.Typer(
    name="sandbox",
    help="A whole cluster on this machine: NATS, API stand-in, watcher, identity, N nodes.",
    no_args_is_help=True,
)

StateRoot = Annotated[
    Path, typer.Option(envvar="WEIR_STATE_ROOT", help="Where sandboxes keep state and logs.")
]
SandboxId = Annotated[
    str, typer.Option("--id", envvar="WEIR_SANDBOX_ID", help="Sandbox id; default: the current.")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"weir sandbox: {message}", err=True)
    return typer.Exit(code)


def supervisor_alive(pid: int, sandbox_id: str) -> bool:
    """Is ``pid`` still the supervisor of ``sandbox_id`` (not a recycled pid)?"""
    if pid <= 0:
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    args = raw.split(b"\0")
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and b"serve" in args and sandbox_id.encode() in args


def _resolve_id(state_root: Path, sandbox_id: str) -> str | None:
    return sandbox_id or read_current(state_root)


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- up ----------------------------------------------------------------------------------------


@sandbox_app.command("up")
def up_command(
    nodes: Annotated[int, typer.Option(envvar="WEIR_NODES", help="Number of nodes (1-10).")] = 2,
    manifests: Annotated[
        list[Path] | None,
        typer.Option(
            "-f", "--manifests", envvar="WEIR_MANIFESTS", help="Manifest files/directories."
        ),
    ] = None,
    sandbox_id: SandboxId = "",
    state_root: StateRoot = DEFAULT_STATE_ROOT,
    timeout: Annotated[
        float, typer.Option(envvar="WEIR_UP_TIMEOUT", help="Seconds to wait for ready.")
    ] = 120.0,
    keep: Annotated[
        bool,
        typer.Option(envvar="WEIR_KEEP", help="On failure, leave the sandbox up to inspect it."),
    ] = False,
    log_level: Annotated[str, typer.Option(envvar="WEIR_LOG_LEVEL")] = "INFO",
) -> None:
    """Start a sandbox in the background and wait until it is ready."""
    from rich.console import Console  # noqa: PLC0415

    console = Console(stderr=True)
    current = read_current(state_root)
    if current:
        st = _safe_status(state_root, current)
        if st is not None and supervisor_alive(st.supervisor_pid, current):
            raise _fail(f"sandbox {current} is running; `weir sandbox down` first")
    if not 1 <= nodes <= 10:
        raise _fail(f"--nodes: {nodes} is not 1-10", 2)
    for path in manifests or []:
        if not path.exists():
            raise _fail(f"--manifests: {path}: no such file or directory", 2)
    sid = sandbox_id or "w" + secrets.token_hex(3)
    from services.sandbox.topology import TopologyError, validate_sandbox_id  # noqa: PLC0415

    try:
        validate_sandbox_id(sid)
    except TopologyError as exc:
        raise _fail(f"--id: {exc}", 2) from None
    directory = state_root / sid
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "supervisor.log"
    argv = [sys.executable, "-m", "services.cli.main", "sandbox", "serve", "--id", sid]
    argv += ["--nodes", str(nodes), "--state-root", str(state_root), "--log-level", log_level]
    for path in manifests or []:
        argv += ["-f", str(path.resolve())]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    write_current(state_root, sid)
    problem = ""
    status: SandboxStatus | None = None
    deadline = time.monotonic() + timeout
    with console.status(f"sandbox {sid}: starting") as spinner:
        while True:
            status = _safe_status(state_root, sid)
            if status is not None:
                waiting = ", ".join(status.waiting_for[:3]) or status.phase
                spinner.update(f"sandbox {sid}: waiting for {waiting}")
                if status.ready:
                    break
                if status.phase == "failed" or status.error:
                    problem = status.error or "supervisor failed"
                    break
            if proc.poll() is not None:
                problem = f"supervisor exited with {proc.returncode}"
                break
            if time.monotonic() > deadline:
                waiting = ", ".join(status.waiting_for) if status else "status.json"
                problem = f"not ready after {timeout:.0f}s; waiting for: {waiting}"
                break
            time.sleep(0.1)
    if problem:
        _explain_failure(console, sid, state_root, status, log, problem)
        if not keep:
            _down(sid, state_root, quiet=True)
        raise typer.Exit(1)
    assert status is not None
    console.print(f"[green]sandbox {sid} ready[/green]")
    _print_summary(status)


def _safe_status(state_root: Path, sid: str) -> SandboxStatus | None:
    from services.sandbox.runinfo import RunInfoError  # noqa: PLC0415

    try:
        return read_status(state_root, sid)
    except RunInfoError:
        return None


def _explain_failure(
    console: object, sid: str, root: Path, status: SandboxStatus | None, log: Path, problem: str
) -> None:
    typer.echo(f"weir sandbox up: sandbox {sid} failed: {problem}", err=True)
    typer.echo(f"--- {log} (last lines)\n{tail(log, 30)}", err=True)
    if status is not None:
        for proc in status.processes:
            if not proc.ready and proc.log:
                typer.echo(f"--- {proc.name}: {proc.log}\n{tail(Path(proc.log), 15)}", err=True)
        for pod in status.pods:
            if pod.get("phase") == "Failed":
                pod_log = root / sid / "logs" / f"{pod['namespace']}_{pod['name']}.log"
                typer.echo(f"--- pod {pod['namespace']}/{pod['name']}\n{tail(pod_log)}", err=True)
    typer.echo(
        "hint: rerun with --keep to leave it running for inspection, or run it in the "
        f"foreground: weir sandbox serve --id {sid} -f ...",
        err=True,
    )


def _print_summary(status: SandboxStatus) -> None:
    typer.echo(f"  NATS:       {status.nats_url}")
    typer.echo(f"  API server: {status.apiserver_url}")
    typer.echo(f"  kubeconfig: {status.kubeconfig}")
    for node in status.nodes:
        typer.echo(f"  node {node.name}: {node.ip} pods {node.pod_cidr}")


# -- down --------------------------------------------------------------------------------------


def _inventory(sid: str, state_root: Path) -> list[str]:
    from services.sandbox import hostfs  # noqa: PLC0415
    from services.sandbox.netns import NETNS_DIR  # noqa: PLC0415
    from services.sandbox.state import FileStateStore, SandboxState, StateError  # noqa: PLC0415

    try:
        state = FileStateStore(state_root).load(sid) or SandboxState(sandbox_id=sid)
    except StateError:
        state = SandboxState(sandbox_id=sid)
    found: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        found += [
            f"netns {n}" for n in sorted(os.listdir(NETNS_DIR)) if n.startswith(f"weir-{sid}-")
        ]
    top = f"weir-{sid}"
    cg_root, bpf_root = Path(state.cgroup_root), Path(state.bpffs_root)
    if (cg_root / top).exists():
        pids = hostfs.cgroup_pids(cg_root, top)
        found.append(f"cgroup {cg_root / top} ({len(pids)} processes)")
    if (bpf_root / top).exists():
        found.append(f"pins {bpf_root / top}")
    if (state_root / sid).exists():
        found.append(f"state {state_root / sid}")
    return found


def _down(sid: str, state_root: Path, *, quiet: bool = False, timeout: float = 30.0) -> int:
    from services.sandbox.cluster import TeardownError, teardown_all  # noqa: PLC0415
    from services.sandbox.runinfo import clear_current  # noqa: PLC0415
    from services.sandbox.state import FileStateStore  # noqa: PLC0415

    before = _inventory(sid, state_root)
    status = _safe_status(state_root, sid)
    stopped = ""
    if status is not None and supervisor_alive(status.supervisor_pid, sid):
        pid = status.supervisor_pid
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while supervisor_alive(pid, sid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if supervisor_alive(pid, sid):
            os.kill(pid, signal.SIGKILL)
            stopped = f"supervisor {pid} (killed after {timeout:.0f}s)"
        else:
            stopped = f"supervisor {pid}"
    code = 0
    try:
        teardown_all(sid, FileStateStore(state_root))
    except TeardownError as exc:
        typer.echo(f"weir sandbox down: {exc}", err=True)
        code = 1
    clear_current(state_root, sid)
    if not quiet:
        if not before and not stopped:
            typer.echo(f"sandbox {sid}: nothing to remove")
        else:
            typer.echo(f"sandbox {sid} removed:")
            for item in ([stopped] if stopped else []) + before:
                typer.echo(f"  {item}")
    return code


@sandbox_app.command("down")
def down_command(sandbox_id: SandboxId = "", state_root: StateRoot = DEFAULT_STATE_ROOT) -> None:
    """Stop the sandbox and remove everything it created (idempotent)."""
    sid = _resolve_id(state_root, sandbox_id)
    if sid is None:
        typer.echo("no sandbox is running")
        return
    raise typer.Exit(_down(sid, state_root))


# -- status ------------------------------------------------------------------------------------


@sandbox_app.command("status")
def status_command(
    sandbox_id: SandboxId = "",
    state_root: StateRoot = DEFAULT_STATE_ROOT,
    output: Annotated[
        str, typer.Option("-o", "--output", envvar="WEIR_OUTPUT", help="table or json.")
    ] = "table",
) -> None:
    """Show NATS, API server, nodes, processes and pods of the sandbox."""
    if output not in ("table", "json"):
        raise _fail(f"--output: {output!r} is not table or json", 2)
    sid = _resolve_id(state_root, sandbox_id)
    status = _safe_status(state_root, sid) if sid else None
    if sid is None or status is None:
        raise _fail("no sandbox is running (weir sandbox up)")
    alive = supervisor_alive(status.supervisor_pid, sid)
    if output == "json":
        typer.echo(json.dumps({**asdict(status), "alive": alive}, indent=2, sort_keys=True))
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    state = status.phase if alive else f"{status.phase} (supervisor not running!)"
    console.print(f"sandbox [bold]{sid}[/bold]: {state}")
    if status.waiting_for and not status.ready:
        console.print("  waiting for: " + ", ".join(status.waiting_for))
    _print_summary(status)
    nodes = Table("node", "IP", "pod CIDR", "worker pid", "ready", title="nodes")
    for node in status.nodes:
        worker = status.process(node.worker)
        pid = str(worker.pid) if worker else "-"
        nodes.add_row(node.name, node.ip, node.pod_cidr, pid, "yes" if node.ready else "no")
    console.print(nodes)
    procs = Table("process", "pid", "ready", "restarts", "metrics", title="processes")
    for p in status.processes:
        procs.add_row(
            p.name, str(p.pid), "yes" if p.ready else "no", str(p.restarts), p.metrics_url
        )
    console.print(procs)
    pods = Table("pod", "node", "IP", "phase", "ready", title="pods")
    for pod in status.pods:
        pods.add_row(
            f"{pod['namespace']}/{pod['name']}",
            pod["node"],
            pod["ip"],
            pod["phase"],
            "yes" if pod["ready"] else "no",
        )
    console.print(pods)


# -- exec --------------------------------------------------------------------------------------


@sandbox_app.command(
    "exec", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True}
)
def exec_command(
    pod: Annotated[str, typer.Argument(help="NAMESPACE/POD")],
    command: Annotated[list[str], typer.Argument(help="-- CMD ARGS...")],
    sandbox_id: SandboxId = "",
    state_root: StateRoot = DEFAULT_STATE_ROOT,
) -> None:
    """Run CMD inside a pod (its netns and cgroup); stdio and exit code pass through."""
    from services.sandbox.procs import exec_argv  # noqa: PLC0415
    from services.sandbox.state import FileStateStore, StateError  # noqa: PLC0415

    sid = _resolve_id(state_root, sandbox_id)
    if sid is None:
        raise _fail("no sandbox is running (weir sandbox up)")
    if "/" not in pod:
        raise _fail(f"pod {pod!r}: expected NAMESPACE/POD", 2)
    try:
        state = FileStateStore(state_root).load(sid)
    except StateError as exc:
        raise _fail(str(exc)) from None
    if state is None:
        raise _fail(f"sandbox {sid}: no state file under {state_root}")
    record = state.pods.get(pod)
    if record is None:
        raise _fail(f"sandbox {sid}: no pod {pod} (known: {', '.join(sorted(state.pods))})")
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise _fail("exec: no command given (use: -- CMD ARGS...)", 2)
    full = exec_argv(record.netns, Path(state.cgroup_root) / record.cgroup, argv)
    env = dict(os.environ)
    # the weir tools (weir-probe, ...) live next to this interpreter: make them findable
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    sys.stdout.flush()
    os.execve(full[0], full, env)


# -- serve (internal) --------------------------------------------------------------------------


@sandbox_app.command("serve", hidden=True)
def serve_command(
    sandbox_id: Annotated[str, typer.Option("--id", envvar="WEIR_SANDBOX_ID")],
    nodes: Annotated[int, typer.Option(envvar="WEIR_NODES")] = 2,
    manifests: Annotated[
        list[Path] | None, typer.Option("-f", "--manifests", envvar="WEIR_MANIFESTS")
    ] = None,
    state_root: StateRoot = DEFAULT_STATE_ROOT,
    identity: Annotated[bool, typer.Option(envvar="WEIR_IDENTITY")] = True,
    datapath_maps: Annotated[str, typer.Option(envvar="WEIR_DATAPATH_MAPS")] = "bpf",
    log_level: Annotated[str, typer.Option(envvar="WEIR_LOG_LEVEL")] = "INFO",
    log_format: Annotated[str, typer.Option(envvar="WEIR_LOG_FORMAT")] = "text",
) -> None:
    """Run a sandbox in the foreground until SIGTERM/SIGINT (what `up` starts)."""
    import asyncio  # noqa: PLC0415

    from services.common.logging import setup_logging  # noqa: PLC0415
    from services.sandbox.supervisor import SupervisorConfig, run_supervisor  # noqa: PLC0415

    setup_logging(log_level, log_format)
    cfg = SupervisorConfig(
        sandbox_id=sandbox_id,
        nodes=nodes,
        manifests=[p.resolve() for p in manifests or []],
        state_root=state_root,
        identity=identity,
        datapath_maps=datapath_maps,
        log_level=log_level,
    )
    try:
        cfg.node_names()
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    raise typer.Exit(asyncio.run(run_supervisor(cfg)))
