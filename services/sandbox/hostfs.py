"""The two things the sandbox adds to the host: cgroup v2 directories and bpffs directories.

Both are plain directory trees, so one small module handles them. Removal is recursive and
tolerant (a tree that is partly or wholly gone is fine), and refuses any path that is not
inside a ``weir-*`` top-level directory, so a corrupted state file can never make teardown
delete a foreign cgroup or pin.

A cgroup cannot be removed while it holds processes: ``cgroup.kill`` (kernel >= 5.14) SIGKILLs
everything in the subtree at once, including processes forked while killing, and
``cgroup.events`` says when the subtree is empty. bpffs pins are files; unlinking a pin drops
the kernel object once nothing else holds it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

WEIR_TOP_PREFIX = "weir-"


class HostFsError(RuntimeError):
    """A cgroup/bpffs operation that failed; the message names the path."""


def _checked(root: Path, rel: str) -> Path:
    parts = Path(rel).parts
    if (
        not parts
        or not parts[0].startswith(WEIR_TOP_PREFIX)
        or ".." in parts
        or Path(rel).is_absolute()
    ):
        raise HostFsError(f"{rel!r}: refusing a path outside a weir-* directory under {root}")
    return root / rel


def make_dir(root: Path, rel: str) -> Path:
    path = _checked(root, rel)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cgroup_pids(root: Path, rel: str) -> list[int]:
    """Every pid in the cgroup subtree ``rel``."""
    top = _checked(root, rel)
    pids: list[int] = []
    if not top.is_dir():
        return pids
    for dirpath, _dirs, _files in os.walk(top):
        try:
            text = Path(dirpath, "cgroup.procs").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids.extend(int(line) for line in text.split())
    return pids


def _populated(path: Path) -> bool:
    try:
        text = (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() == "1"
    return False


def kill_cgroup(root: Path, rel: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in the subtree and wait until it is empty."""
    path = _checked(root, rel)
    if not path.is_dir() or not _populated(path):
        return
    try:
        (path / "cgroup.kill").write_text("1")
    except FileNotFoundError:
        return
    deadline = time.monotonic() + timeout
    while _populated(path):
        if time.monotonic() > deadline:
            raise HostFsError(f"cgroup {path}: still populated {timeout}s after cgroup.kill")
        time.sleep(0.005)


def remove_cgroup_tree(root: Path, rel: str, timeout: float = 5.0) -> None:
    """Kill everything in the subtree, then rmdir it bottom-up (cgroup files are not unlinked).

    A process that joins the subtree between the kill and the rmdir (a launcher that was just
    starting) makes rmdir fail with EBUSY: kill again and retry until ``timeout``.
    """
    path = _checked(root, rel)
    deadline = time.monotonic() + timeout
    while path.is_dir():
        kill_cgroup(root, rel, timeout)
        try:
            for directory in sorted(
                (Path(d) for d, _s, _f in os.walk(path)), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(FileNotFoundError):
                    directory.rmdir()
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise HostFsError(f"cgroup {exc.filename}: cannot remove: {exc.strerror}") from exc
            time.sleep(0.01)


def remove_pin_tree(root: Path, rel: str) -> None:
    """Unlink every pin and remove every directory of the bpffs subtree ``rel``."""
    path = _checked(root, rel)
    if not path.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            Path(dirpath, name).unlink(missing_ok=True)
        for name in dirnames:
            with contextlib.suppress(FileNotFoundError):
                Path(dirpath, name).rmdir()
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()
