"""Pod processes: start a pod's workload, or exec a command, inside its netns and cgroup.

Every process goes through ``launch.py`` (join cgroup, join netns, execvp), so the pid we get
back is the workload itself and it is inside the pod's cgroup before its first instruction;
``cgroup.kill`` on the pod (or the sandbox) therefore reaches it and everything it forks.

* ``spawn`` starts a long-running workload detached (own session, stdin from /dev/null, stdout
  and stderr appended to a log file next to the state file), so it survives the orchestrator.
* ``run`` executes a command to completion and passes through exit code, stdout and stderr;
  it is what ``weir sandbox exec NS/POD -- CMD`` calls (``exec_argv`` gives the argv for a
  pass-through exec that inherits the terminal).
* ``workload_argv`` decides what a pod runs: its ``command``, or the built-in echo server on
  every declared port (pure).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.sandbox.topology import Port

LAUNCH_MODULE = "services.sandbox.launch"
ECHO_MODULE = "services.sandbox.echo"


class ProcError(RuntimeError):
    """A pod process that could not be started or did not become ready; names pod and log."""


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


def workload_argv(name: str, command: Sequence[str], ports: Sequence[Port]) -> list[str]:
    """The pod's command, or the echo server answering with ``name`` on every declared port."""
    if command:
        return list(command)
    argv = [sys.executable, "-m", ECHO_MODULE, "--name", name]
    for port in ports:
        argv += ["--tcp" if port.protocol == "TCP" else "--udp", str(port.port)]
    if len(argv) == 5:
        # No ports declared: still run something that holds the pod, answers on nothing.
        return [sys.executable, "-c", "import signal; signal.pause()"]
    return argv


def exec_argv(netns: str, cgroup_dir: Path | None, argv: Sequence[str]) -> list[str]:
    """argv that runs ``argv`` inside the pod (for spawn, run, or os.execv pass-through)."""
    if not argv:
        raise ProcError("exec: empty command")
    out = [sys.executable, "-m", LAUNCH_MODULE, "--netns", netns]
    if cgroup_dir is not None:
        out += ["--cgroup", str(cgroup_dir)]
    return [*out, "--", *argv]


def spawn(netns: str, cgroup_dir: Path, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(
            exec_argv(netns, cgroup_dir, argv),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def run(
    netns: str,
    cgroup_dir: Path | None,
    argv: Sequence[str],
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> ExecResult:
    done = subprocess.run(
        exec_argv(netns, cgroup_dir, argv),
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return ExecResult(done.returncode, done.stdout, done.stderr)


def wait_entered(
    proc: subprocess.Popen[bytes], netns_file: Path, log: Path, what: str, timeout: float = 10.0
) -> None:
    """Wait until the launcher has joined the pod (cgroup first, then netns, then exec).

    Without this, a teardown right after a spawn could run its ``cgroup.kill`` before the
    launcher joined the cgroup, and the process would escape it.
    """
    want = os.stat(netns_file)
    deadline = time.monotonic() + timeout
    while True:
        try:
            have = os.stat(f"/proc/{proc.pid}/ns/net")
            if (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino):
                return
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise ProcError(
                f"{what}: exited with {proc.returncode} before entering; log {log}:\n{text}"
            )
        if time.monotonic() > deadline:
            raise ProcError(f"{what}: did not enter its namespace within {timeout}s; log {log}")
        time.sleep(0.002)


def wait_for_log_line(
    proc: subprocess.Popen[bytes], log: Path, line: str, what: str, timeout: float = 10.0
) -> None:
    """Wait until ``log`` contains ``line`` (e.g. the echo server's ``ready``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        if line in text.splitlines():
            return
        if proc.poll() is not None:
            raise ProcError(
                f"{what}: exited with {proc.returncode} before ready; log {log}:\n{text}"
            )
        if time.monotonic() > deadline:
            raise ProcError(f"{what}: not ready after {timeout}s; log {log}:\n{text}")
        time.sleep(0.01)
