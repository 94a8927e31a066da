"""Load bpf/sock_lb.c with bcc, verify and reuse its pinned maps, attach it to a cgroup for good.

Why it is shaped this way:

* Maps are pinned under ``<pin_dir>/<version>/`` (bcc's BPF_TABLE_PINNED reuses an existing pin),
  so a restarted worker finds the service state where the last one left it. bcc reuses a pin
  whatever its shape, so before compiling we compare every existing pin's type, key size, value
  size, max_entries and flags with what this build would create, and refuse with an error naming
  the map and the difference. A layout change therefore needs a new version directory.
* Programs are attached through bpf links pinned under ``<version>/links/``. A pinned link keeps
  the program attached after the worker dies (SIGKILL included), and a restarted worker swaps in
  its freshly loaded program with BPF_LINK_UPDATE, which is atomic: the hook is never empty, so
  connects never fail during a restart and nothing is attached twice. ``close()`` therefore only
  drops this process's handles; ``detach()`` is the explicit "remove Weir from this cgroup".
  Beside the four sock_addr programs, ``sock4_release`` (a cgroup sock program at
  BPF_CGROUP_INET_SOCK_RELEASE) frees a closing socket's ``lb4_sk_peer`` slot; it is attached
  first and detached last (see :data:`PROGRAMS`), and pins of a version without it just get its
  link created.
* Settings reach the C code only as -D flags (pin directory and map sizes). The service CIDR(s)
  (``lb4_service_ranges``: unknown addresses there are refused with ECONNREFUSED) are data, not
  code: install writes them into the pinned map, replacing what a previous install wrote.
* ``lb4_frontends`` (what connect4 reads first) is derived state: the control plane writes it from
  the masters, slots and backends (``lbmap.frontend_value``). Before any program is attached or
  re-pointed, :meth:`SockLB.load` rebuilds it from the pinned ``lb4_services``/``lb4_backends``
  (:func:`rebuild_frontends`): entries that differ from what the record implies are written,
  entries without a master are deleted. Why: after an upgrade from a version without the map it
  starts empty, and the freshly loaded program must never see a service as missing (a connect
  would go to the bare VIP or be refused in the service CIDR); and after any history (a crash
  between two writes, a downgrade that changed services and an upgrade back) the map is made
  consistent with the record before the programs that read it are attached. On an empty node it
  costs two ``BPF_MAP_GET_NEXT_KEY`` calls (~0.3 ms; the loader child is on the cold-start path);
  with services it costs a dump of the maps and the derivation (~0.4 s of CPU at 10,000 services
  of three backends on the 2-core VM, most of it the dump, which the worker repeats anyway).
* The worker runs this module as a short-lived child (``python -m services.datapath.loader``):
  bcc's LLVM keeps ~135 MB resident in whatever process compiled a program, and a worker lives
  for days. The child verifies, compiles, loads and (re-)attaches, then exits; the worker only
  opens the pinned maps with plain bpf(2) calls.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Self

from services.datapath import bpfsys
from services.datapath.bpflayout import (
    MAP_FRONTENDS,
    MAP_SERVICES,
    MapCapacities,
    MapSpec,
    map_specs,
)
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import (
    FrontendValue,
    LBMapState,
    MapError,
    ServiceKey,
    derive_frontends,
)
from services.datapath.svcranges import SERVICE_RANGES_MAX, parse_service_cidrs

log = logging.getLogger(__name__)

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/weir")
DEFAULT_VERSION = "v1"
BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

PROG_TYPE_CGROUP_SOCK = 9  # ctx struct bpf_sock
PROG_TYPE_CGROUP_SOCK_ADDR = 18  # ctx struct bpf_sock_addr
RELEASE = "sock_release"
# (function in sock_lb.c, bpf_prog_type, bpf_attach_type, short name used for the link pin).
# The release program comes first: attach() goes in this order, so it is in place before a
# connect4 that claims lb4_sk_peer slots (a socket closing without it would keep its slot), and
# detach_links() removes it last.
PROGRAMS = (
    ("sock4_release", PROG_TYPE_CGROUP_SOCK, 34, RELEASE),  # BPF_CGROUP_INET_SOCK_RELEASE
    ("sock4_connect", PROG_TYPE_CGROUP_SOCK_ADDR, 10, "connect4"),  # BPF_CGROUP_INET4_CONNECT
    ("sock4_sendmsg", PROG_TYPE_CGROUP_SOCK_ADDR, 14, "sendmsg4"),  # BPF_CGROUP_UDP4_SENDMSG
    ("sock4_recvmsg", PROG_TYPE_CGROUP_SOCK_ADDR, 19, "recvmsg4"),  # BPF_CGROUP_UDP4_RECVMSG
    ("sock4_getpeername", PROG_TYPE_CGROUP_SOCK_ADDR, 29, "getpeername4"),  # ..._GETPEERNAME
)


class PinMismatchError(Exception):
    """A pinned map exists with a different shape than this build would create."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(
            f"pinned map {path} does not match this build: {'; '.join(problems)}. "
            f"Remove the pin directory {path.parent} (its state is rebuilt from the bus) or "
            "choose a new pin version"
        )
        self.path = path
        self.problems = problems


class LoadError(Exception):
    """bcc could not compile or the kernel refused a program."""


def default_pin_dir(node: str) -> Path:
    return DEFAULT_PIN_ROOT / node


def verify_pins(version_dir: Path, specs: tuple[MapSpec, ...]) -> None:
    """Raise PinMismatchError for the first existing pin whose shape differs from its spec."""
    for spec in specs:
        path = version_dir / spec.pin
        if not path.exists():
            continue
        fd = bpfsys.obj_get(path)
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        want = {
            "type": spec.map_type,
            "key_size": ctypes.sizeof(spec.key),
            "value_size": ctypes.sizeof(spec.value),
            "max_entries": spec.max_entries,
            "flags": spec.flags,
        }
        have = {
            "type": info.type,
            "key_size": info.key_size,
            "value_size": info.value_size,
            "max_entries": info.max_entries,
            "flags": info.flags,
        }
        problems = [
            f"{field} is {_fmt(field, have[field])}, this build needs {_fmt(field, value)}"
            for field, value in want.items()
            if have[field] != value
        ]
        if problems:
            raise PinMismatchError(path, [f"map {spec.pin}: {p}" for p in problems])


def _fmt(field: str, value: int) -> str:
    if field == "type":
        return bpfsys.MAP_TYPE_NAMES.get(value, str(value))
    return str(value)


def check_compiled(bpf: Any, specs: Sequence[MapSpec], layout: str) -> None:
    """Raise LoadError unless every map bcc compiled has the key/value sizes of its ctypes
    mirror in ``layout`` (a module path, for the message): otherwise every decode is garbage.
    Ring buffers have no key or value and are skipped."""
    for spec in specs:
        if spec.map_type == bpfsys.MAP_TYPE_RINGBUF:
            continue
        table = bpf[spec.pin.encode()]
        leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables: the per-CPU element
        sizes = (ctypes.sizeof(table.Key), ctypes.sizeof(leaf))
        want = (ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))
        if sizes != want:
            raise LoadError(
                f"map {spec.pin}: compiled key/value sizes {sizes} differ from {layout} {want}"
            )


def frontend_repairs(
    state: LBMapState,
) -> tuple[dict[ServiceKey, FrontendValue], list[ServiceKey]]:
    """What makes ``state.frontends`` equal to what its masters, slots and backends imply (pure):
    the entries to write (missing or different) and the keys to delete (no master)."""
    want = derive_frontends(state)
    have = state.frontends
    writes = {key: value for key, value in want.items() if have.get(key) != value}
    deletes = [key for key in have if key not in want]
    return writes, deletes


def rebuild_frontends(maps: BpfLBMap) -> tuple[int, int]:
    """Make the pinned ``lb4_frontends`` consistent with ``lb4_services``/``lb4_backends`` (see
    the module docstring); returns (entries written, entries deleted). Writes go first: the
    deletes only remove entries whose master is gone."""
    if maps.maps[MAP_SERVICES].empty() and maps.maps[MAP_FRONTENDS].empty():
        return 0, 0  # a new node: nothing to read
    writes, deletes = frontend_repairs(maps.dump())
    if writes:
        maps.update_frontends(writes)
    if deletes:
        maps.delete_frontends(deletes)
    return len(writes), len(deletes)


class BccPrograms:
    """What a loader holds while its programs are loaded: the bcc object and the program fds.

    Shared by the socket LB (:class:`SockLB`) and the policy programs
    (``policyloader.PolicyLoader``). Closing drops only this process's handles: the pinned maps,
    the pinned links and the tc filters keep the programs running.
    """

    def __init__(self, pin_dir: Path, version: str, bpf_dir: Path) -> None:
        if not version or "/" in version or version.startswith("."):
            raise ValueError(
                f"{type(self).__name__}.version: {version!r} is not a plain directory name"
            )
        self.dir = Path(pin_dir) / version
        self.bpf_dir = bpf_dir
        self._bpf: Any = None
        self._progs: dict[str, int] = {}  # program name -> prog fd (owned by the bcc object)

    def close(self) -> None:
        """Drop this process's handles. Attachments and maps stay (they are pinned)."""
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None
        self._progs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SockLB(BccPrograms):
    """The socket-level load balancer of one node: compile, load, attach, hand out the maps."""

    def __init__(
        self,
        pin_dir: Path,
        capacities: MapCapacities | None = None,
        *,
        version: str = DEFAULT_VERSION,
        bpf_dir: Path = BPF_DIR,
        service_cidrs: Sequence[str] | None = None,
    ) -> None:
        """``service_cidrs``: the ranges to refuse unknown addresses in, written by load();
        None leaves the pinned ranges as they are (an empty sequence clears them)."""
        super().__init__(pin_dir, version, bpf_dir)
        self.service_ranges = (
            None if service_cidrs is None else parse_service_cidrs(service_cidrs, "service_cidrs")
        )
        self.capacities = capacities or MapCapacities()
        self.specs = map_specs(self.capacities)
        self.frontends_repaired = (0, 0)  # (written, deleted) by the last load()

    @property
    def links_dir(self) -> Path:
        return self.dir / "links"

    def cflags(self) -> list[str]:
        c = self.capacities
        return [
            f"-I{self.bpf_dir}",
            f'-DPIN_DIR="{self.dir}"',
            f"-DLB4_SERVICES_MAX={c.services}",
            f"-DLB4_BACKENDS_MAX={c.backends}",
            f"-DLB4_REVNAT_MAX={c.revnat}",
            f"-DLB4_AFFINITY_MAX={c.affinity}",
            f"-DLB4_SK_REVNAT_MAX={c.sk_revnat}",
            f"-DLB4_SERVICE_RANGES_MAX={SERVICE_RANGES_MAX}",
            f"-DLB4_SK_PEER_MAX={c.sk_peer}",
        ]

    def load(self) -> None:
        """Verify existing pins, compile, create/reuse the pinned maps, load the programs, write
        the service ranges (when given), rebuild lb4_frontends from the record (before attach():
        see the module docstring). ``frontends_repaired`` tells what the rebuild wrote/deleted."""
        import bcc  # noqa: PLC0415 - Debian's bcc; only the loader needs it

        self.dir.mkdir(parents=True, exist_ok=True)
        verify_pins(self.dir, self.specs)
        try:
            self._bpf = bcc.BPF(
                src_file=str(self.bpf_dir / "sock_lb.c").encode(), cflags=self.cflags()
            )
            for func, prog_type, attach_type, short in PROGRAMS:
                fn = self._bpf.load_func(func.encode(), prog_type, attach_type=attach_type)
                self._progs[short] = fn.fd
        except Exception as exc:  # bcc raises bare Exception
            self.close()
            raise LoadError(f"loading {self.bpf_dir / 'sock_lb.c'}: {exc}") from exc
        try:
            check_compiled(self._bpf, self.specs, "services/datapath/bpflayout.py")
        except LoadError:
            self.close()
            raise
        with self.maps() as maps:
            if self.service_ranges is not None:
                maps.set_service_ranges(self.service_ranges)
            self.frontends_repaired = rebuild_frontends(maps)

    def maps(self) -> BpfLBMap:
        """A new handle on the pinned maps (the caller closes it)."""
        return BpfLBMap(self.dir, self.capacities)

    def _link_pin(self, cgroup_id: int, short: str) -> Path:
        return self.links_dir / f"cg{cgroup_id}_{short}"

    def attach(self, cgroup: Path) -> None:
        """Attach (or atomically re-point) the five programs on a cgroup v2 directory, in
        :data:`PROGRAMS` order (release first). Pins of an older version without a link for
        one of them (the release program) get it created."""
        if not self._progs:
            raise LoadError("SockLB.attach: call load() first")
        cgroup_id = os.stat(cgroup).st_ino  # cgroup v2: the id is the directory's inode
        self.links_dir.mkdir(parents=True, exist_ok=True)
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _func, _prog_type, attach_type, short in PROGRAMS:
                self._attach_one(cg_fd, cgroup_id, attach_type, short)
        finally:
            os.close(cg_fd)

    def _attach_one(self, cg_fd: int, cgroup_id: int, attach_type: int, short: str) -> None:
        pin = self._link_pin(cgroup_id, short)
        prog_fd = self._progs[short]
        if pin.exists():
            link_fd = bpfsys.obj_get(pin)
            try:
                bpfsys.link_update(link_fd, prog_fd)  # atomic swap: the hook is never empty
                return
            except OSError as exc:
                if exc.errno != errno.ENOLINK:  # ENOLINK: its cgroup is gone; start afresh
                    raise
                pin.unlink()
            finally:
                os.close(link_fd)
        link_fd = bpfsys.link_create(prog_fd, cg_fd, attach_type)
        try:
            bpfsys.obj_pin(link_fd, pin)
        finally:
            os.close(link_fd)

    def detach(self, cgroup: Path | None = None) -> None:
        """Remove the programs from ``cgroup`` (every cgroup when None) and unpin their links."""
        prefix = f"cg{os.stat(cgroup).st_ino}_" if cgroup is not None else "cg"
        detach_links(self.links_dir, prefix)


def detach_links(links_dir: Path, prefix: str = "cg") -> None:
    """Detach and unpin the links whose pin names start with ``prefix``; the release program's
    last, so no socket that connect4 gave an lb4_sk_peer slot closes without it."""
    if not links_dir.is_dir():
        return
    for pin in sorted(links_dir.iterdir(), key=lambda p: (p.name.endswith(f"_{RELEASE}"), p.name)):
        if not pin.name.startswith(prefix):
            continue
        link_fd = bpfsys.obj_get(pin)
        try:
            with contextlib.suppress(OSError):  # already defunct (cgroup removed)
                bpfsys.link_detach(link_fd)
        finally:
            os.close(link_fd)
        pin.unlink()


def remove_pins(version_dir: Path) -> None:
    """Detach every pinned link and delete the pin directory (maps go with their last user)."""
    detach_links(version_dir / "links")
    if version_dir.exists():
        shutil.rmtree(version_dir)


class Installed(NamedTuple):
    dir: Path  # the version directory
    frontends_repaired: tuple[int, int]  # (written, deleted) by the rebuild before attach


def install(
    pin_dir: Path,
    cgroup: Path,
    version: str = DEFAULT_VERSION,
    service_cidrs: Sequence[str] = (),
) -> Installed:
    """Load and attach (or atomically re-point) the programs, with exactly ``service_cidrs`` as
    the service ranges."""
    lb = SockLB(pin_dir, version=version, service_cidrs=service_cidrs)
    try:
        lb.load()
        lb.attach(cgroup)
    finally:
        lb.close()
    return Installed(lb.dir, lb.frontends_repaired)


def uninstall(pin_dir: Path, cgroup: Path | None = None) -> list[Path]:
    """Detach from ``cgroup`` (every cgroup when None) and, when nothing stays attached, remove
    the pins of every version under ``pin_dir``. Returns the version directories removed."""
    removed: list[Path] = []
    if not pin_dir.is_dir():
        return removed
    for version in sorted(p for p in pin_dir.iterdir() if p.is_dir()):
        prefix = f"cg{os.stat(cgroup).st_ino}_" if cgroup is not None else "cg"
        detach_links(version / "links", prefix)
        links = version / "links"
        if not (links.is_dir() and any(links.iterdir())):
            remove_pins(version)
            removed.append(version)
    with contextlib.suppress(OSError):
        pin_dir.rmdir()
    return removed


def install_in_child(
    pin_dir: Path,
    cgroup: Path,
    version: str = DEFAULT_VERSION,
    service_cidrs: Sequence[str] = (),
) -> Path:
    """:func:`install` in a child process, so the caller never holds bcc's memory. Raises
    LoadError with the child's own error line (e.g. a PinMismatchError naming the map); logs a
    warning when the child had to repair lb4_frontends (an operator should know that the index
    connect() reads did not match the record: a first start of this version, or a crash)."""
    cmd = [sys.executable, "-m", "services.datapath.loader", "install",
           "--pin-dir", str(pin_dir), "--cgroup", str(cgroup), "--version", version]  # fmt: skip
    for cidr in service_cidrs:
        cmd += ["--service-cidr", cidr]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise LoadError(lines[-1] if lines else f"loader exited with {done.returncode}")
    out = json.loads(done.stdout.splitlines()[-1])
    written, deleted = out.get("frontends_repaired", (0, 0))
    if written or deleted:
        log.warning(
            "%s: lb4_frontends did not match the pinned services map; the loader rewrote %d "
            "entries and removed %d before attaching (first start of this version, or a crash "
            "between two map writes)",
            pin_dir,
            written,
            deleted,
        )
    return Path(out["dir"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.datapath.loader")
    parser.add_argument("action", choices=("install", "uninstall"))
    parser.add_argument("--pin-dir", required=True)
    parser.add_argument("--cgroup", default="")
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--service-cidr", action="append", default=[], dest="service_cidrs")
    args = parser.parse_args(argv)
    cgroup = Path(args.cgroup) if args.cgroup else None
    try:
        if args.action == "install":
            if cgroup is None:
                raise LoadError("install: --cgroup is required")
            done = install(Path(args.pin_dir), cgroup, args.version, args.service_cidrs)
            print(json.dumps({"dir": str(done.dir), "frontends_repaired": done.frontends_repaired}))
        else:
            print(json.dumps({"removed": [str(p) for p in uninstall(Path(args.pin_dir), cgroup)]}))
    except (PinMismatchError, LoadError, MapError, OSError, ValueError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
