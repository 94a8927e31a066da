"""Exec a command inside a pod: join its cgroup, join its netns, then exec (pid is preserved).

``python -m services.sandbox.launch --netns NAME --cgroup DIR -- CMD ARGS...``

Why a separate launcher instead of ``preexec_fn``: ``preexec_fn`` runs Python between fork and
exec, which is unsafe in a process with threads (pyroute2 and asyncio both start threads), and
Python 3.11 has no ``os.setns``. A tiny stdlib-only program is safe, works the same from the
CLI (``weir sandbox exec``), from tests and from a shell, and because it ends in ``execvp``
the spawned pid IS the pod's process (tests can read ``/proc/<pid>/cgroup`` and ``ns/net``).

Order matters: the cgroup is joined FIRST (writing ``0`` to ``cgroup.procs`` moves the caller),
so the socket-LB programs attached to the node's cgroup already apply when the command makes its
first connect(); then the netns, then exec. Exit status: the command's own, or 127 (not found)
/ 126 (not executable) / 125 (could not enter the pod), like ``env`` and container runtimes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

CLONE_NEWNET = 0x40000000
EXIT_CANNOT_ENTER = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


def enter(netns_path: str | None, cgroup_dir: str | None) -> None:
    """Move the calling process into ``cgroup_dir`` and its (only) thread into ``netns_path``."""
    if cgroup_dir:
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as fh:
            fh.write("0")
    if netns_path:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), netns_path)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.sandbox.launch")
    parser.add_argument("--netns", help="netns path or name under /run/netns")
    parser.add_argument("--cgroup", help="absolute cgroup v2 directory to join")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given (use: -- CMD ARGS...)")
    netns = args.netns
    if netns and "/" not in netns:
        netns = f"/run/netns/{netns}"
    try:
        enter(netns, args.cgroup)
    except OSError as exc:
        print(
            f"launch: cannot enter pod (netns={netns}, cgroup={args.cgroup}): {exc}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_ENTER
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        print(f"launch: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as exc:
        print(f"launch: {command[0]}: {exc.strerror}", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
