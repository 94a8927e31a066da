"""Loopback helpers for whatever starts Weir's processes on one machine.

Why here: the sandbox supervisor, the benchmark stack and the test fixtures all start a
nats-server (and other listeners) on a free loopback port; one copy keeps the port choice and
the binary lookup (the venv's ``bin`` first, then ``PATH``) the same for all of them.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (the venv), else on ``PATH``."""
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    found = found or shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: run `bash scripts/setup.sh`")
    return found
