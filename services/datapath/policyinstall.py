"""Compile and load the policy programs in a child process; the worker keeps only their fds.

Why: bcc's in-process LLVM adds ~135 MB to any process that compiles, and the datapath worker
lives for days holding the whole desired state, so it must never compile. The LB programs are
attached once to a cgroup through pinned links (``loader.install_in_child``), but the policy
programs are attached to pod veths for the worker's whole life, so the worker needs the
program fds themselves. A child (``python -m services.datapath.policyinstall``) runs
:class:`~services.datapath.policyloader.PolicyLoader` (verify pins, compile, create/reuse the
pinned maps, load), sends the program fds back over a socketpair (SCM_RIGHTS) and exits; the
kernel keeps the programs alive through the worker's copies of the fds.

:class:`AdoptedPolicyLoader` is the worker's side: a ``PolicyLoader`` that never compiles, whose
programs are the adopted fds (``attach``, ``maps`` and ``events_pin`` work as before).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from services.datapath.loader import LoadError, PinMismatchError
from services.datapath.policyloader import PROGRAMS, PolicyLoader

_MAX_MSG = 4096


class AdoptedPolicyLoader(PolicyLoader):
    """A PolicyLoader whose programs were loaded by :func:`install_in_child`."""

    def adopt(self, progs: dict[str, int]) -> None:
        missing = {func for func, _parent, _name in PROGRAMS} - set(progs)
        if missing:
            raise LoadError(f"policy install child: no fd for {', '.join(sorted(missing))}")
        self._progs = dict(progs)

    def load(self) -> None:
        raise LoadError("AdoptedPolicyLoader.load: programs come from install_in_child")

    def close(self) -> None:
        for fd in self._progs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._progs.clear()


def install_in_child(pin_dir: Path) -> AdoptedPolicyLoader:
    """Load the policy programs of ``pin_dir`` in a child and adopt their fds. Blocking (call it
    through ``asyncio.to_thread``). Raises LoadError with the child's own last error line."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent, child:
        cmd = [sys.executable, "-m", "services.datapath.policyinstall",
               "--pin-dir", str(pin_dir), "--fd", str(child.fileno())]  # fmt: skip
        proc = subprocess.Popen(
            cmd, pass_fds=(child.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        child.close()
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent, _MAX_MSG, len(PROGRAMS))
        finally:
            _out, err = proc.communicate()
        if proc.returncode != 0 or not msg:
            for fd in fds:
                os.close(fd)
            lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
            raise LoadError(lines[-1] if lines else f"policy install exited {proc.returncode}")
    names = json.loads(msg)["programs"]
    loader = AdoptedPolicyLoader(pin_dir)
    loader.adopt(dict(zip(names, fds, strict=True)))
    return loader


def _send(sock_fd: int, pin_dir: Path) -> None:
    loader = PolicyLoader(pin_dir)
    loader.load()
    try:
        names = [func for func, _parent, _name in PROGRAMS]
        fds = [loader._progs[func] for func in names]
        with socket.socket(fileno=sock_fd) as sock:
            body = json.dumps({"programs": names}).encode()
            sock.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    finally:
        loader.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.datapath.policyinstall")
    parser.add_argument("--pin-dir", required=True, help="the node's pin dir (version below)")
    parser.add_argument("--fd", type=int, required=True, help="socket to send program fds on")
    args = parser.parse_args(argv)
    try:
        _send(args.fd, Path(args.pin_dir))
    except (PinMismatchError, LoadError, OSError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
