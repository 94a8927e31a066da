"""The sandbox's state file: a write-ahead list of everything it creates outside its own process.

``weir sandbox down`` must remove everything ``up`` created, also after ``up`` crashed half way,
was SIGKILLed, or the machine's Python died. So every namespace, cgroup directory and bpffs
directory is recorded in the state file BEFORE it is created (intent first, then the effect):
after any crash the file lists a superset of what exists, and teardown tolerates entries that
never came to be. Writes are atomic (temp file + rename), so a crash never leaves half a file.

The file also carries what ``exec`` and ``status`` need (pods: node, netns, IP, cgroup), so
those commands do not need the orchestrator to be alive.

Layout: ``<root>/<sandbox id>/state.json`` with root ``/run/weir/sandbox`` (tmpfs: a reboot
clears both the file and everything it describes). Logs of pod processes sit next to it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

DEFAULT_STATE_ROOT = Path("/run/weir/sandbox")
DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
DEFAULT_BPFFS_ROOT = Path("/sys/fs/bpf")
STATE_VERSION = 1


class StateError(ValueError):
    """A state file that cannot be read back; the message names the file and the field."""


@dataclass
class PodRecord:
    namespace: str
    name: str
    node: str
    netns: str
    ip: str
    cgroup: str  # relative to cgroup_root
    host_ifname: str
    pid: int | None = None
    log: str | None = None


@dataclass
class SandboxState:
    sandbox_id: str
    cgroup_root: str = str(DEFAULT_CGROUP_ROOT)
    bpffs_root: str = str(DEFAULT_BPFFS_ROOT)
    nodes: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # relative to cgroup_root, parents first
    pin_dirs: list[str] = field(default_factory=list)  # relative to bpffs_root, parents first
    pods: dict[str, PodRecord] = field(default_factory=dict)  # "namespace/name" -> record
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "state") -> SandboxState:
        try:
            raw: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(f"{source}: not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise StateError(f"{source}: top level must be an object")
        if raw.get("version") != STATE_VERSION:
            raise StateError(f"{source}: version: {raw.get('version')!r} != {STATE_VERSION}")
        try:
            pods = {k: PodRecord(**v) for k, v in raw.get("pods", {}).items()}
            raw = {**raw, "pods": pods}
            state = cls(**raw)
        except TypeError as exc:
            raise StateError(f"{source}: unexpected or missing field: {exc}") from exc
        for name in ("nodes", "netns", "cgroups", "pin_dirs"):
            value = getattr(state, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise StateError(f"{source}: {name}: must be a list of strings")
        return state

    def remember(self, kind: str, item: str) -> bool:
        """Add ``item`` to the list ``kind`` (netns, cgroups, pin_dirs); True if it was new."""
        items: list[str] = getattr(self, kind)
        if item in items:
            return False
        items.append(item)
        return True

    def forget(self, kind: str, item: str) -> None:
        items: list[str] = getattr(self, kind)
        if item in items:
            items.remove(item)


class StateStore(Protocol):
    def load(self, sandbox_id: str) -> SandboxState | None: ...
    def save(self, state: SandboxState) -> None: ...
    def delete(self, sandbox_id: str) -> None: ...
    def list_ids(self) -> list[str]: ...


class FileStateStore:
    """The real store: ``<root>/<id>/state.json``, written atomically."""

    def __init__(self, root: Path = DEFAULT_STATE_ROOT) -> None:
        self.root = root

    def dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def path(self, sandbox_id: str) -> Path:
        return self.dir(sandbox_id) / "state.json"

    def load(self, sandbox_id: str) -> SandboxState | None:
        path = self.path(sandbox_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return SandboxState.from_json(text, source=str(path))

    def save(self, state: SandboxState) -> None:
        directory = self.dir(state.sandbox_id)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(state.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path(state.sandbox_id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, sandbox_id: str) -> None:
        directory = self.dir(sandbox_id)
        if not directory.exists():
            return
        for child in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink(missing_ok=True)
        directory.rmdir()

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "state.json").is_file())


class MemoryStateStore:
    """The fake store for pure tests: same contract, a dict of JSON strings."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def load(self, sandbox_id: str) -> SandboxState | None:
        text = self.files.get(sandbox_id)
        return None if text is None else SandboxState.from_json(text, source=sandbox_id)

    def save(self, state: SandboxState) -> None:
        self.files[state.sandbox_id] = state.to_json()

    def delete(self, sandbox_id: str) -> None:
        self.files.pop(sandbox_id, None)

    def list_ids(self) -> list[str]:
        return sorted(self.files)
