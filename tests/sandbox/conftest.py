"""Fixtures for real sandboxes: unique ids, a tmp state root, teardown even when a test fails."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.sandbox.cluster import Sandbox, teardown_all
from services.sandbox.state import FileStateStore

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def new_sandbox_id() -> str:
    return "t" + secrets.token_hex(3)


def host_snapshot() -> dict[str, str]:
    """The host (root) namespace's routes, rules and links, as `ip` prints them."""
    cmds = {
        "route4": ["ip", "-4", "route", "show", "table", "all"],
        "route6": ["ip", "-6", "route", "show", "table", "all"],
        "rules": ["ip", "rule", "show"],
        "links": ["ip", "-o", "link", "show"],
    }
    snap = {
        k: subprocess.run(v, capture_output=True, text=True, check=True).stdout
        for k, v in cmds.items()
    }
    # link counters/state flags are not configuration; keep only "index: name"
    snap["links"] = "\n".join(":".join(line.split(":")[:2]) for line in snap["links"].splitlines())
    snap["ip_forward"] = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    return snap


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make_sandbox(state_root: Path) -> Iterator[list[Sandbox]]:
    """Collects sandboxes a test builds; tears each down afterwards, pass or fail."""
    built: list[Sandbox] = []
    yield built
    for sb in built:
        teardown_all(sb.plan.sandbox_id, FileStateStore(state_root))
