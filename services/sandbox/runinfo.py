"""``status.json`` and ``current``: how the supervisor tells the CLI what is running and whether
the sandbox is ready.

The supervisor is a detached process; ``weir sandbox up`` waits for it, ``status`` shows it,
``down`` stops it, and tests read where NATS and the API server listen. They all read one file,
``<state root>/<id>/status.json``, which the supervisor rewrites atomically (temp file + rename)
on every change. It is plain JSON, so shell scripts and ``jq`` read it too. ``phase`` is
``starting`` -> ``ready`` (or ``failed`` with ``error``) -> ``stopping``; ``waiting_for`` lists
what readiness still lacks, in words, for the progress spinner.

``<state root>/current`` holds the id of the sandbox ``up`` created last: only one at a time by
default, and every command without ``--id`` means that one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
CURRENT_FILE = "current"


class RunInfoError(ValueError):
    """A status file that cannot be read back; names the file and the field."""


@dataclass
class ProcessInfo:
    name: str
    pid: int = 0
    metrics_url: str = ""
    log: str = ""
    restarts: int = 0
    running: bool = False
    ready: bool = False


@dataclass
class NodeRow:
    name: str
    ip: str
    pod_cidr: str
    worker: str  # name of its datapath process in ``processes``
    ready: bool = False
    pin_dir: str = ""  # the node's bpffs directory (its datapath's --pin-dir)
    netns: str = ""  # the node's network namespace


@dataclass
class SandboxStatus:
    id: str
    supervisor_pid: int
    phase: str = "starting"
    error: str = ""
    waiting_for: list[str] = field(default_factory=list)
    nats_url: str = ""
    kubeconfig: str = ""
    apiserver_url: str = ""
    state_dir: str = ""
    nodes: list[NodeRow] = field(default_factory=list)
    processes: list[ProcessInfo] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    def process(self, name: str) -> ProcessInfo | None:
        return next((p for p in self.processes if p.name == name), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> SandboxStatus:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunInfoError(f"{source}: not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise RunInfoError(f"{source}: top level must be an object")
        try:
            nodes = [NodeRow(**n) for n in raw.pop("nodes", [])]
            processes = [ProcessInfo(**p) for p in raw.pop("processes", [])]
            return cls(**raw, nodes=nodes, processes=processes)
        except TypeError as exc:
            raise RunInfoError(f"{source}: unexpected or missing field: {exc}") from exc


def status_path(state_root: Path, sandbox_id: str) -> Path:
    return state_root / sandbox_id / STATUS_FILE


def write_status(state_root: Path, status: SandboxStatus) -> None:
    path = status_path(state_root, status.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(status.to_json())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(state_root: Path, sandbox_id: str) -> SandboxStatus | None:
    path = status_path(state_root, sandbox_id)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return SandboxStatus.from_json(text, str(path))


def read_current(state_root: Path) -> str | None:
    try:
        value = (state_root / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return value or None


def write_current(state_root: Path, sandbox_id: str) -> None:
    state_root.mkdir(parents=True, exist_ok=True)
    (state_root / CURRENT_FILE).write_text(sandbox_id + "\n")


def clear_current(state_root: Path, sandbox_id: str) -> None:
    """Forget ``current`` only if it still names ``sandbox_id`` (a newer one stays)."""
    if read_current(state_root) == sandbox_id:
        (state_root / CURRENT_FILE).unlink(missing_ok=True)
