"""``Sandbox``: build and tear down the sandbox's namespaces, cgroups, pins and pod processes.

This is the API the orchestration (``weir sandbox up/down/exec``) calls. It composes the pure
plan (topology, wiring) with the I/O edges (``NetOps``, hostfs, procs) and keeps the state file
as a write-ahead log: every resource is recorded and saved BEFORE it is created, so the file
always lists a superset of what exists and ``teardown_all`` can remove everything after a crash.

``teardown_all`` does not even need the state file: names are derived from the sandbox id, so it
also sweeps ``weir-<id>-*`` namespaces and the ``weir-<id>`` cgroup and bpffs trees. Order:
kill every process of the sandbox (``cgroup.kill`` on the whole tree, then any process still
inside a sandbox netns), delete pod, node and fabric namespaces (which destroys their veths),
remove the cgroup and pin trees, then the state directory. Each step tolerates missing pieces
and failures are collected, so one stuck item never leaves the rest behind.

Usage (as root; call from a thread when inside asyncio, pyroute2's sync API runs its own loop)::

    sb = Sandbox.create("ab12", ["node1", "node2"])
    sb.up()
    pod = sb.add_pod("default", "web-0", "node1", ports=[(8080, "TCP")])
    result = sb.exec("default/web-0", ["cat", "/etc/hostname"])
    sb.down()                       # or: teardown_all("ab12") from another process
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from services.sandbox import hostfs, procs
from services.sandbox.netns import LinuxNet, NetOps, netns_path
from services.sandbox.state import (
    DEFAULT_STATE_ROOT,
    FileStateStore,
    PodRecord,
    SandboxState,
    StateStore,
)
from services.sandbox.topology import (
    PodPlan,
    SandboxPlan,
    TopologyError,
    netns_prefix,
    plan_pod,
    plan_sandbox,
)
from services.sandbox.wiring import fabric_steps, node_steps, pod_steps


class TeardownError(RuntimeError):
    """Teardown finished but some items could not be removed; lists each with its reason."""


@dataclass
class Sandbox:
    plan: SandboxPlan
    state: SandboxState
    store: StateStore
    net: NetOps = field(default_factory=LinuxNet)
    log_dir: Path = DEFAULT_STATE_ROOT / "logs"
    ready_timeout: float = 10.0
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(
        cls,
        sandbox_id: str,
        node_names: Sequence[str],
        *,
        state_root: Path = DEFAULT_STATE_ROOT,
        cgroup_root: Path | None = None,
        bpffs_root: Path | None = None,
        net: NetOps | None = None,
    ) -> Sandbox:
        plan = plan_sandbox(sandbox_id, node_names)
        store = FileStateStore(state_root)
        state = store.load(sandbox_id) or SandboxState(sandbox_id=sandbox_id)
        if state.nodes and state.nodes != list(plan.node_names()):
            raise TopologyError(
                f"sandbox {sandbox_id}: nodes: state file has {state.nodes}, asked for "
                f"{list(node_names)}; run down first"
            )
        if cgroup_root is not None:
            state.cgroup_root = str(cgroup_root)
        if bpffs_root is not None:
            state.bpffs_root = str(bpffs_root)
        return cls(
            plan=plan,
            state=state,
            store=store,
            net=net or LinuxNet(),
            log_dir=store.dir(sandbox_id) / "logs",
        )

    @property
    def cgroup_root(self) -> Path:
        return Path(self.state.cgroup_root)

    @property
    def bpffs_root(self) -> Path:
        return Path(self.state.bpffs_root)

    def node_cgroup(self, node: str) -> Path:
        """The node's cgroup: its datapath attaches the socket-LB programs here."""
        return self.cgroup_root / self.plan.node(node).cgroup

    def node_pin_dir(self, node: str) -> Path:
        return self.bpffs_root / self.plan.node(node).pin_dir

    def pod_cgroup(self, key: str) -> Path:
        return self.cgroup_root / self._pod(key).cgroup

    # -- intent log ------------------------------------------------------------------------

    def _intend(self, kind: str, item: str) -> None:
        if self.state.remember(kind, item):
            self.store.save(self.state)

    def _mkdir_cgroup(self, rel: str) -> None:
        self._intend("cgroups", rel)
        hostfs.make_dir(self.cgroup_root, rel)

    def _mkdir_pins(self, rel: str) -> None:
        self._intend("pin_dirs", rel)
        hostfs.make_dir(self.bpffs_root, rel)

    def _netns(self, name: str) -> None:
        self._intend("netns", name)
        self.net.create_netns(name)

    # -- fabric and nodes ------------------------------------------------------------------

    def up(self) -> SandboxState:
        """Create (or complete) the fabric, every node, their cgroups and pin directories."""
        self.state.nodes = list(self.plan.node_names())
        self.store.save(self.state)
        self._mkdir_cgroup(self.plan.root_cgroup)
        self._mkdir_pins(self.plan.root_pin_dir)
        self._netns(self.plan.fabric_netns)
        self.net.apply(fabric_steps(self.plan))
        for node in self.plan.nodes:
            self._netns(node.netns)
            self.net.apply(node_steps(self.plan, node))
            self._mkdir_cgroup(node.cgroup)
            self._mkdir_cgroup(node.pods_cgroup)
            self._mkdir_pins(node.pin_dir)
        return self.state

    # -- pods ------------------------------------------------------------------------------

    def _pod(self, key: str) -> PodRecord:
        try:
            return self.state.pods[key]
        except KeyError:
            raise TopologyError(f"sandbox {self.plan.sandbox_id}: no pod {key!r}") from None

    def plan_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        ports: Iterable[tuple[int, str]] = (),
        command: Sequence[str] = (),
    ) -> PodPlan:
        used = [IPv4Address(p.ip) for p in self.state.pods.values() if p.node == node]
        return plan_pod(
            self.plan, node, namespace, name, used_ips=used, ports=ports, command=command
        )

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        ports: Iterable[tuple[int, str]] = (),
        command: Sequence[str] = (),
        start: bool = True,
    ) -> PodRecord:
        """Wire a pod to its node and (unless ``start=False``) start its workload."""
        key = f"{namespace}/{name}"
        if key in self.state.pods:
            raise TopologyError(f"pod {key}: already exists in sandbox {self.plan.sandbox_id}")
        pod = self.plan_pod(namespace, name, node, ports=ports, command=command)
        record = PodRecord(
            namespace=namespace,
            name=name,
            node=node,
            netns=pod.netns,
            ip=str(pod.ip),
            cgroup=pod.cgroup,
            host_ifname=pod.host_ifname,
        )
        self.state.pods[key] = record
        self.store.save(self.state)
        self._mkdir_cgroup(pod.cgroup)
        self._netns(pod.netns)
        self.net.apply(pod_steps(self.plan, pod))
        if start:
            self.start_pod(key, procs.workload_argv(name, pod.command, pod.ports), pod.command)
        return record

    def start_pod(self, key: str, argv: Sequence[str], command: Sequence[str] = ()) -> int:
        """Spawn ``argv`` in the pod; when it is the echo server, wait until it listens."""
        record = self._pod(key)
        log = self.log_dir / f"{record.namespace}_{record.name}.log"
        proc = procs.spawn(record.netns, self.cgroup_root / record.cgroup, argv, log)
        self._children[key] = proc
        record.pid, record.log = proc.pid, str(log)
        self.store.save(self.state)
        procs.wait_entered(proc, netns_path(record.netns), log, f"pod {key}", self.ready_timeout)
        if not command and procs.ECHO_MODULE in argv:
            procs.wait_for_log_line(proc, log, "ready", f"pod {key}", self.ready_timeout)
        return proc.pid

    def remove_pod(self, key: str) -> None:
        record = self._pod(key)
        hostfs.remove_cgroup_tree(self.cgroup_root, record.cgroup)
        self._reap(key)
        self.net.delete_netns(record.netns)  # takes the veth pair (and the node's /32) with it
        self.state.forget("netns", record.netns)
        self.state.forget("cgroups", record.cgroup)
        del self.state.pods[key]
        self.store.save(self.state)

    def exec(
        self,
        key: str,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> procs.ExecResult:
        record = self._pod(key)
        return procs.run(record.netns, self.cgroup_root / record.cgroup, argv, stdin, timeout)

    def _reap(self, key: str) -> None:
        """Collect the exit status of a killed child we spawned (no zombies in a long run)."""
        proc = self._children.pop(key, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)

    def down(self) -> None:
        try:
            teardown_all(self.plan.sandbox_id, self.store, self.net, self.state)
        finally:
            for key in list(self._children):
                self._reap(key)


def teardown_all(
    sandbox_id: str,
    store: StateStore | None = None,
    net: NetOps | None = None,
    state: SandboxState | None = None,
) -> list[str]:
    """Remove everything of sandbox ``sandbox_id``; returns what was removed.

    Works from ``state`` (or the stored state file) and ALSO from names derived from the id, so
    it cleans up after a crash that lost the state file. Raises ``TeardownError`` (after trying
    everything) if some item could not be removed.
    """
    prefix = netns_prefix(sandbox_id)
    store = store or FileStateStore()
    net = net or LinuxNet()
    if state is None:
        state = store.load(sandbox_id) or SandboxState(sandbox_id=sandbox_id)
    cg_root, bpf_root = Path(state.cgroup_root), Path(state.bpffs_root)
    top = f"weir-{sandbox_id}"
    removed: list[str] = []
    errors: list[str] = []

    def attempt(what: str, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
            removed.append(what)
        except Exception as exc:
            errors.append(f"{what}: {exc}")

    cgroups = sorted({*state.cgroups, top}, key=lambda p: len(Path(p).parts))
    attempt(f"processes in cgroup {top}", hostfs.kill_cgroup, cg_root, top)
    for rel in cgroups:
        if Path(rel).parts[0] != top:  # foreign top-level entries are killed on their own
            attempt(f"processes in cgroup {rel}", hostfs.kill_cgroup, cg_root, rel)
    namespaces = {*state.netns, *net.list_netns(prefix)}
    # pods first, fabric last: deleting a node first would strand the pods' host-side veths
    for name in sorted(namespaces, key=lambda n: (n.endswith("-fabric"), "-pod-" not in n, n)):
        attempt(f"netns {name}", net.delete_netns, name)
    for rel in reversed(cgroups):
        attempt(f"cgroup {rel}", hostfs.remove_cgroup_tree, cg_root, rel)
    for rel in sorted({*state.pin_dirs, top}, key=lambda p: -len(Path(p).parts)):
        attempt(f"pins {rel}", hostfs.remove_pin_tree, bpf_root, rel)
    attempt(f"state {sandbox_id}", store.delete, sandbox_id)
    if errors:
        raise TeardownError(f"sandbox {sandbox_id}: teardown left: " + "; ".join(errors))
    return removed
