"""Which NATS and which pin directory an inspect command talks to, by default the sandbox's.

Why: an operator on a sandbox should not have to copy URLs and paths around, and one on a real
node should get the documented defaults. Precedence: an explicit ``--nats`` / ``--pin-dir`` (or
their ``WEIR_*`` variables), then the running sandbox, then the defaults. The choice is pure
(:func:`choose_nats_url`, :func:`choose_pin_dir`); reading the sandbox is a small I/O edge.

The sandbox is read from the plain JSON files its supervisor keeps (``<root>/current``,
``<root>/<id>/status.json``, ``<root>/<id>/state.json``), not through ``services.sandbox``:
the layers keep the sandbox and the operator tools independent, and the files are the documented
interface (shell scripts and ``jq`` read them too). A sandbox counts as up while its supervisor
process exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.datapath.loader import default_pin_dir

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_STATE_ROOT = Path("/run/weir/sandbox")  # services.sandbox.state.DEFAULT_STATE_ROOT


@dataclass(frozen=True)
class SandboxInfo:
    """What the inspect commands need from a running sandbox."""

    id: str
    nats_url: str
    phase: str = ""
    pin_dirs: dict[str, Path] = field(default_factory=dict)  # node -> base pin dir


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _alive(pid: object) -> bool:
    return isinstance(pid, int) and pid > 0 and Path(f"/proc/{pid}").exists()


def sandbox_info(status: dict[str, Any], state: dict[str, Any] | None) -> SandboxInfo:
    """Pure: the fields we use from ``status.json`` (and ``state.json`` for pin dirs)."""
    sid = str(status.get("id", ""))
    pins: dict[str, Path] = {}
    bpffs = Path(str((state or {}).get("bpffs_root", "/sys/fs/bpf")))
    state_nodes = (state or {}).get("nodes", [])
    for row in status.get("nodes", []) or []:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        name = row["name"]
        if isinstance(row.get("pin_dir"), str) and row["pin_dir"]:
            pins[name] = Path(row["pin_dir"])
        elif isinstance(state_nodes, list) and name in state_nodes:
            pins[name] = bpffs / f"weir-{sid}" / name  # services.sandbox.topology's layout
    return SandboxInfo(
        id=sid,
        nats_url=str(status.get("nats_url", "")),
        phase=str(status.get("phase", "")),
        pin_dirs=pins,
    )


def running_sandbox(
    state_root: Path | None = None, sandbox_id: str | None = None
) -> SandboxInfo | None:
    """The sandbox ``current`` names (or ``sandbox_id``) if its supervisor is alive, else None.

    ``WEIR_STATE_ROOT`` and ``WEIR_SANDBOX_ID`` are honoured like ``weir sandbox`` does.
    """
    root = state_root or Path(os.environ.get("WEIR_STATE_ROOT") or DEFAULT_STATE_ROOT)
    sid = sandbox_id or os.environ.get("WEIR_SANDBOX_ID") or ""
    if not sid:
        try:
            sid = (root / "current").read_text().strip()
        except OSError:
            return None
    if not sid:
        return None
    status = _read_json(root / sid / "status.json")
    if status is None or not _alive(status.get("supervisor_pid")):
        return None
    return sandbox_info(status, _read_json(root / sid / "state.json"))


def choose_nats_url(explicit: str | None, sandbox: SandboxInfo | None) -> tuple[str, str]:
    """(url, where it came from): ``--nats``, else the sandbox's, else the default."""
    if explicit:
        return explicit, "--nats"
    if sandbox is not None and sandbox.nats_url:
        return sandbox.nats_url, f"sandbox {sandbox.id}"
    return DEFAULT_NATS_URL, "default"


def choose_pin_dir(node: str, explicit: str | None, sandbox: SandboxInfo | None) -> Path:
    """The node's base pin dir: ``--pin-dir``, else the sandbox node's, else the default."""
    if explicit:
        return Path(explicit)
    if sandbox is not None and node in sandbox.pin_dirs:
        return sandbox.pin_dirs[node]
    return default_pin_dir(node)
