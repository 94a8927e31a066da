"""Load bpf/policy.c with bcc, verify and reuse its pinned maps, attach it to pods' veths with tc.

Why it is shaped this way (the conventions of ``loader.SockLB``):

* Maps are pinned under ``<pin_dir>/<version>/policy_*``, the node's versioned pin directory
  shared with the socket LB. bcc reuses a pin whatever its shape, so every existing pin is
  compared with what this build creates (``loader.verify_pins``) *before* compiling, and a
  difference is refused with an error naming the map and the field.
* Settings reach the C code only as -D flags (pin directory, map sizes, conntrack lifetimes).
* Attachment is a tc ``clsact`` qdisc with one direct-action ``bpf`` filter per hook on the
  pod's host-side veth: tc ingress runs ``policy_from_endpoint`` (the pod's egress), tc egress
  runs ``policy_to_endpoint`` (the pod's ingress). The filter holds a reference to the program,
  so enforcement goes on while the worker is down. Filters have a fixed priority and handle,
  and attaching is a netlink *replace*: a restarted worker swaps its freshly loaded program in
  atomically instead of adding a second filter. ``close()`` only drops this process's handles.
* Interfaces live in the node's network namespace while the worker may run elsewhere (the root
  namespace): every tc call takes the namespace by name (``/run/netns/<name>``) or path
  (``/proc/<pid>/ns/net``). pyroute2 opens its netlink socket inside that namespace from a
  short-lived child process and hands the socket back, so the program fd stays ours.
  pyroute2's synchronous API runs its own event loop and cannot be called from a running
  asyncio loop: async callers use ``asyncio.to_thread(loader.attach, ...)``.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.datapath.loader import (
    BPF_DIR,
    DEFAULT_VERSION,
    BccPrograms,
    LoadError,
    PinMismatchError,
    check_compiled,
    verify_pins,
)
from services.datapath.policybpf import BpfPolicyMaps
from services.datapath.policylayout import (
    CtLifetimes,
    PolicyCapacities,
    policy_map_specs,
)

__all__ = ["AttachError", "Attachment", "LoadError", "PinMismatchError", "PolicyLoader"]

PROG_TYPE_SCHED_CLS = 3
TC_PRIO = 1  # our filters' priority on each hook; with TC_HANDLE it identifies them
TC_HANDLE = 1
FILTER_PREFIX = "weir-policy"
PARENT_INGRESS = 0xFFFFFFF2  # clsact: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
PARENT_EGRESS = 0xFFFFFFF3  # clsact: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)

# (function in policy.c, tc hook parent, filter name)
PROGRAMS = (
    ("policy_from_endpoint", PARENT_INGRESS, f"{FILTER_PREFIX}-from-endpoint"),
    ("policy_to_endpoint", PARENT_EGRESS, f"{FILTER_PREFIX}-to-endpoint"),
)


class AttachError(Exception):
    """An interface or namespace is missing, or the kernel refused the tc change."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """One Weir filter found on an interface (what ``attachments()`` reports)."""

    ifindex: int
    ifname: str
    hook: str  # "ingress" (from the pod) or "egress" (to the pod)
    name: str  # filter name, FILTER_PREFIX-...


class PolicyLoader(BccPrograms):
    """The policy programs of one node: compile, load, hand out the maps, attach to veths."""

    def __init__(
        self,
        pin_dir: Path,
        capacities: PolicyCapacities | None = None,
        lifetimes: CtLifetimes | None = None,
        *,
        version: str = DEFAULT_VERSION,
        bpf_dir: Path = BPF_DIR,
    ) -> None:
        super().__init__(pin_dir, version, bpf_dir)
        self.capacities = capacities or PolicyCapacities()
        self.lifetimes = lifetimes or CtLifetimes()
        self.specs = policy_map_specs(self.capacities)

    def cflags(self) -> list[str]:
        c, t = self.capacities, self.lifetimes
        return [
            f"-I{self.bpf_dir}",
            f'-DPIN_DIR="{self.dir}"',
            f"-DPOLICY_ENDPOINTS_MAX={c.endpoints}",
            f"-DPOLICY_IPCACHE_MAX={c.ipcache}",
            f"-DPOLICY_RULES_MAX={c.rules}",
            f"-DPOLICY_CT_MAX={c.ct}",
            f"-DPOLICY_EVENTS_BYTES={c.events_bytes}",
            f"-DCT_LIFETIME_TCP={t.tcp}",
            f"-DCT_LIFETIME_NONTCP={t.nontcp}",
            f"-DCT_LIFETIME_CLOSE={t.close}",
        ]

    def load(self) -> None:
        """Verify existing pins, compile, create/reuse the pinned maps, load both programs."""
        import bcc  # noqa: PLC0415 - Debian's bcc; only the loader needs it

        self.dir.mkdir(parents=True, exist_ok=True)
        verify_pins(self.dir, self.specs)
        src = self.bpf_dir / "policy.c"
        try:
            self._bpf = bcc.BPF(src_file=str(src).encode(), cflags=self.cflags())
            for func, _parent, _name in PROGRAMS:
                self._progs[func] = self._bpf.load_func(func.encode(), PROG_TYPE_SCHED_CLS).fd
        except Exception as exc:  # bcc raises bare Exception
            self.close()
            raise LoadError(f"loading {src}: {exc}") from exc
        try:
            check_compiled(self._bpf, self.specs, "services/datapath/policylayout.py")
        except LoadError:
            self.close()
            raise

    def maps(self) -> BpfPolicyMaps:
        """A new handle on the pinned maps (the caller closes it)."""
        return BpfPolicyMaps(self.dir, self.capacities)

    @property
    def events_pin(self) -> Path:
        """The pinned ring buffer, for ``flowevents.FlowEventReader``."""
        return self.dir / "policy_events"

    # --- tc attachment -------------------------------------------------------------------------

    def attach(self, interface: str | int, netns: str | None = None) -> int:
        """Attach (or atomically replace) both programs on ``interface`` (name or ifindex) in
        ``netns`` (None = this process's namespace). Returns the ifindex. Blocking: from
        asyncio, call it through ``asyncio.to_thread``."""
        if not self._progs:
            raise LoadError("PolicyLoader.attach: call load() first")
        with _iproute(netns) as ipr:
            ifindex = _resolve(ipr, interface, netns)
            try:
                ipr.tc("add", "clsact", ifindex)
            except Exception as exc:
                if _errno(exc) != errno.EEXIST:
                    raise AttachError(_where(interface, netns, f"adding clsact: {exc}")) from exc
            for func, parent, name in PROGRAMS:
                try:
                    ipr.tc(
                        "replace-filter",
                        "bpf",
                        ifindex,
                        TC_HANDLE,
                        fd=self._progs[func],
                        name=name,
                        parent=parent,
                        prio=TC_PRIO,
                        direct_action=True,
                    )
                except Exception as exc:
                    raise AttachError(_where(interface, netns, f"attaching {name}: {exc}")) from exc
        return ifindex


def detach(interface: str | int, netns: str | None = None) -> None:
    """Remove Weir's policy filters from one interface (absent filters are fine)."""
    with _iproute(netns) as ipr:
        ifindex = _resolve(ipr, interface, netns)
        _detach_index(ipr, ifindex)


def detach_all(netns: str | None = None) -> list[int]:
    """Remove Weir's policy filters from every interface of ``netns``; returns the ifindexes
    that had some. Filters of other programs are left alone."""
    with _iproute(netns) as ipr:
        found = sorted({a.ifindex for a in _attachments(ipr)})
        for ifindex in found:
            _detach_index(ipr, ifindex)
        return found


def attachments(netns: str | None = None) -> list[Attachment]:
    """Every Weir policy filter in ``netns``, sorted by interface and hook."""
    with _iproute(netns) as ipr:
        return sorted(_attachments(ipr), key=lambda a: (a.ifindex, a.hook))


def _attachments(ipr: Any) -> Iterator[Attachment]:
    for link in ipr.get_links():
        ifindex, ifname = link["index"], link.get_attr("IFLA_IFNAME")
        for parent, hook in ((PARENT_INGRESS, "ingress"), (PARENT_EGRESS, "egress")):
            try:
                filters = ipr.get_filters(index=ifindex, parent=parent)
            except Exception as exc:
                if _errno(exc) in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                    continue  # no clsact qdisc here, or the link vanished
                raise
            for msg in filters:
                options = msg.get_attr("TCA_OPTIONS")
                name = options.get_attr("TCA_BPF_NAME") if options is not None else None
                if isinstance(name, str) and name.startswith(FILTER_PREFIX):
                    yield Attachment(ifindex, ifname, hook, name)


def _detach_index(ipr: Any, ifindex: int) -> None:
    for _func, parent, _name in PROGRAMS:
        try:
            ipr.tc("del-filter", "bpf", ifindex, TC_HANDLE, parent=parent, prio=TC_PRIO)
        except Exception as exc:
            if _errno(exc) not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise AttachError(f"interface {ifindex}: detaching: {exc}") from exc


@contextlib.contextmanager
def _iproute(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute  # noqa: PLC0415 - only the attach path needs netlink

    if netns is not None:
        path = Path(netns) if "/" in netns else Path("/run/netns") / netns
        if not path.exists():
            raise AttachError(f"network namespace {netns!r} does not exist ({path})")
        ipr = IPRoute(netns=str(path), flags=0)  # flags=0: never create the namespace
    else:
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _resolve(ipr: Any, interface: str | int, netns: str | None) -> int:
    if isinstance(interface, int) and not isinstance(interface, bool):
        try:
            ipr.get_links(interface)
        except Exception as exc:
            raise AttachError(_where(interface, netns, f"no such interface ({exc})")) from exc
        return interface
    found = ipr.link_lookup(ifname=interface)
    if not found:
        raise AttachError(_where(interface, netns, "no such interface"))
    return int(found[0])


def _where(interface: str | int, netns: str | None, problem: str) -> str:
    return f"interface {interface!r} in netns {netns or '(own)'}: {problem}"


def _errno(exc: Exception) -> int | None:
    code = getattr(exc, "code", None)  # pyroute2 NetlinkError
    if isinstance(code, int):
        return code
    return getattr(exc, "errno", None)
