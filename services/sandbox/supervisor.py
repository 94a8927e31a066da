"""``weir sandbox serve``: the foreground process that IS a running sandbox.

It builds the sandbox (namespaces, cgroups, pins), then runs the cluster as processes:
nats-server (JetStream, store in the state dir), ``weir apiserver`` (kubeconfig in the state dir,
the ``-f`` manifests), ``weir watcher``, ``weir identity`` and one ``weir datapath`` per node
(attached to that node's cgroup, pins in its pin dir), each with an ops server on a free loopback
port and a log in ``<state dir>/logs/``; in-process it plays kubelet and EndpointSlice
controller. Children are restarted when they crash (``children``).

It writes ``status.json`` (``runinfo``) on every change and declares the sandbox ready when the
API server is up, the nodes are registered, every pod is Running+Ready, every child is ready and
the pipeline has converged (``convergence``: slices written, published, applied on every node).
If readiness is not reached because something is broken for good (a pod Failed), it says so in
``error`` and keeps running so the user can look; ``up`` decides to tear down.

SIGTERM/SIGINT: stop the controllers, stop the children (datapath first, NATS last), then
``Sandbox.down()`` (which kills anything left in the cgroup tree and removes every namespace,
cgroup and pin) and forget ``current``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from services.common.bus import Bus, connect_bus
from services.common.localhost import free_port, nats_server_binary
from services.sandbox import convergence, hostfs
from services.sandbox.children import Child, ChildSpec
from services.sandbox.cluster import Sandbox
from services.sandbox.kubelet import Kubelet
from services.sandbox.podruntime import SandboxRuntime
from services.sandbox.runinfo import NodeRow, SandboxStatus, clear_current, write_status
from services.sandbox.state import DEFAULT_STATE_ROOT

log = logging.getLogger(__name__)

WEIR = [sys.executable, "-m", "services.cli.main"]


@dataclass
class SupervisorConfig:
    sandbox_id: str
    nodes: int = 2
    manifests: list[Path] = field(default_factory=list)
    state_root: Path = DEFAULT_STATE_ROOT
    cgroup_root: Path | None = None
    bpffs_root: Path | None = None
    identity: bool = True
    datapath_maps: str = "bpf"
    log_level: str = "INFO"

    def node_names(self) -> list[str]:
        if not 1 <= self.nodes <= 10:
            raise ValueError(f"--nodes: {self.nodes} is not 1-10")
        return [f"node{i + 1}" for i in range(self.nodes)]


class Supervisor:
    def __init__(self, cfg: SupervisorConfig) -> None:
        self.cfg = cfg
        self.node_names = cfg.node_names()
        self.dir = cfg.state_root / cfg.sandbox_id
        self.logs = self.dir / "logs"
        self.status = SandboxStatus(id=cfg.sandbox_id, supervisor_pid=os.getpid())
        self.status.state_dir = str(self.dir)
        self.children: dict[str, Child] = {}
        self.sandbox: Sandbox | None = None
        self.kubelet: Kubelet | None = None
        self.slices: Any = None
        self.bus: Bus | None = None
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    def changed(self) -> None:
        self._dirty.set()

    # -- building ----------------------------------------------------------------------------

    def _child(self, name: str, argv: list[str], metrics_url: str = "") -> Child:
        assert self.sandbox is not None
        cgroup = self.sandbox.cgroup_root / f"weir-{self.cfg.sandbox_id}" / "control"
        # every process writes its spans where `weir trace` looks by default
        tracing = {
            "WEIR_TRACE_FILE": str(self.dir / "traces" / f"{name}.jsonl"),
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the file promptly
        }
        spec = ChildSpec(name, argv, self.logs / f"{name}.log", cgroup, metrics_url, tracing)
        child = Child(spec, on_event=self.changed)
        self.children[name] = child
        self._tasks.append(asyncio.create_task(child.run(), name=f"child-{name}"))
        return child

    def _write(self) -> None:
        self.status.processes = [c.info() for c in self.children.values()]
        for row in self.status.nodes:
            worker = self.children.get(row.worker)
            row.ready = bool(worker and worker.ready)
        if self.kubelet is not None:
            self.status.pods = self.kubelet.pod_rows()
        write_status(self.cfg.state_root, self.status)

    async def _create_sandbox(self) -> Sandbox:
        cfg = self.cfg
        sb = await asyncio.to_thread(
            Sandbox.create,
            cfg.sandbox_id,
            self.node_names,
            state_root=cfg.state_root,
            cgroup_root=cfg.cgroup_root,
            bpffs_root=cfg.bpffs_root,
        )
        self.sandbox = sb
        await asyncio.to_thread(sb.up)
        control = f"weir-{cfg.sandbox_id}/control"
        if sb.state.remember("cgroups", control):
            sb.store.save(sb.state)
        hostfs.make_dir(sb.cgroup_root, control)
        for node in sb.plan.nodes:
            self.status.nodes.append(
                NodeRow(
                    node.name,
                    str(node.node_ip),
                    str(node.pod_cidr),
                    f"datapath-{node.name}",
                    pin_dir=str(sb.node_pin_dir(node.name)),
                    netns=node.netns,
                )
            )
        return sb

    async def _wait(self, what: str, check: Any, limit: float = 30.0) -> None:
        self.status.waiting_for = [what]
        self._write()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not await check():
            if loop.time() > deadline:
                raise TimeoutError(f"{what}: not ready after {limit:.0f}s")
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        cfg = self.cfg
        self.status.waiting_for = ["network namespaces, cgroups, pins"]
        self._write()
        sb = await self._create_sandbox()
        session = aiohttp.ClientSession()
        self._session = session
        nats_port, api_port = free_port(), free_port()
        nats_url = f"nats://127.0.0.1:{nats_port}"
        api_url = f"http://127.0.0.1:{api_port}"
        kubeconfig = self.dir / "kubeconfig"
        self.status.nats_url, self.status.apiserver_url = nats_url, api_url
        self.status.kubeconfig = str(kubeconfig)
        store = self.dir / "nats"
        nats = self._child(
            "nats-server",
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(nats_port),
                "-sd",
                str(store),
            ],
        )
        await self._wait("nats-server", lambda: _tcp_ready("127.0.0.1", nats_port))
        nats.ready = True
        api_argv = [*WEIR, "apiserver", "--listen", f"127.0.0.1:{api_port}"]
        api_argv += ["--kubeconfig-out", str(kubeconfig), "--log-level", cfg.log_level]
        for path in cfg.manifests:
            api_argv += ["--manifests", str(path)]
        api = self._child("apiserver", api_argv, api_url)
        await self._wait("apiserver", lambda: api.check_ready(session))
        self.bus = await connect_bus(nats_url, f"sandbox-{cfg.sandbox_id}")
        common = ["--nats", nats_url, "--log-level", cfg.log_level]

        def ops() -> tuple[str, str]:
            port = free_port()
            return f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"

        listen, url = ops()
        self._child(
            "watcher",
            [
                *WEIR,
                "watcher",
                *common,
                "--kubeconfig",
                str(kubeconfig),
                "--metrics-listen",
                listen,
            ],
            url,
        )
        if cfg.identity:
            listen, url = ops()
            instance = f"sandbox-{cfg.sandbox_id}"
            self._child(
                "identity",
                [*WEIR, "identity", *common, "--metrics-listen", listen, "--instance", instance],
                url,
            )
        for node in self.node_names:
            listen, url = ops()
            argv = [*WEIR, "datapath", "--node", node, *common, "--metrics-listen", listen]
            argv += ["--cgroup", str(sb.node_cgroup(node)), "--pin-dir", str(sb.node_pin_dir(node))]
            argv += ["--maps", cfg.datapath_maps]
            argv += ["--netns", sb.plan.node(node).netns]  # where the pods' veths are
            argv += ["--service-cidr", str(sb.plan.service_cidr)]  # unknown ClusterIPs: refused
            self._child(f"datapath-{node}", argv, url)
        await self._start_controllers(kubeconfig)

    async def _start_controllers(self, kubeconfig: Path) -> None:
        from services.sandbox.slicecontroller import EndpointSliceController  # noqa: PLC0415
        from services.watcher.kube import load_api_client  # noqa: PLC0415

        assert self.sandbox is not None
        self._api = await load_api_client(str(kubeconfig))
        self.kubelet = Kubelet(self._api, SandboxRuntime(self.sandbox), on_change=self.changed)
        self.slices = EndpointSliceController(self._api)
        self._tasks.append(asyncio.create_task(self.kubelet.run(), name="kubelet"))
        self._tasks.append(asyncio.create_task(self.slices.run(), name="endpointslices"))

    # -- readiness ---------------------------------------------------------------------------

    async def waiting_for(self) -> list[str]:
        kubelet = self.kubelet
        assert kubelet is not None and self.bus is not None
        waiting: list[str] = []
        for child in self.children.values():
            if not await child.check_ready(self._session):
                waiting.append(f"{child.name} ({'/readyz' if child.running else 'not running'})")
        if not kubelet.nodes_registered.is_set():
            waiting.append("node registration")
        if not kubelet.pods.synced.is_set():
            waiting.append("pod list")
        for key in kubelet.not_ready_pods():
            namespace, _, name = key.partition("/")
            status = kubelet.pods.objects[(namespace, name)].get("status") or {}
            phase = status.get("phase") or "Pending"
            if phase == "Failed":
                self.status.error = f"pod {key} Failed: {status.get('message') or 'exited'}"
            waiting.append(f"pod {key} ({phase})")
        if waiting:
            return waiting
        services = list(self.slices.services.objects.values())
        pods = list(self.slices.pods.objects.values())
        slices = list(self.slices.slices.objects.values())
        waiting = convergence.slices_pending(services, pods, slices)
        if not waiting:
            waiting = await convergence.check(self.bus.js, services, slices, self.node_names)
        return waiting

    async def watch(self) -> None:
        """Refresh status.json on changes and every 0.25 s; flip to ready once nothing lags."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), 0.25)
            self._dirty.clear()
            for task in self._tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise RuntimeError(f"{task.get_name()} failed") from task.exception()
            try:
                waiting = await self.waiting_for()
            except Exception as exc:  # a transient bus/API hiccup: say so, try again
                waiting = [f"readiness check: {exc}"]
            self.status.waiting_for = waiting
            if not waiting and self.status.phase == "starting":
                self.status.phase = "ready"
                self.status.error = ""
                log.info("sandbox %s ready", self.cfg.sandbox_id)
            self._write()

    # -- stopping ----------------------------------------------------------------------------

    async def stop(self) -> None:
        self.status.phase = "stopping"
        with contextlib.suppress(OSError):
            self._write()
        for task in self._tasks:
            if not task.get_name().startswith("child-"):
                task.cancel()
        order = sorted(
            self.children.values(),
            key=lambda c: {"nats-server": 3, "apiserver": 2}.get(c.name, 0),
        )
        for child in order:
            await child.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        for closer in (getattr(self, "_api", None), getattr(self, "_session", None)):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.close()
        if self.sandbox is not None:
            await asyncio.to_thread(self.sandbox.down)
        clear_current(self.cfg.state_root, self.cfg.sandbox_id)
        log.info("sandbox %s torn down", self.cfg.sandbox_id)


async def _tcp_ready(host: str, port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 0.5)
        return line.startswith(b"INFO")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set ``stop``, in THIS process only.

    Not ``loop.add_signal_handler``: that routes signals through a wakeup fd, which processes
    forked from our threads (pyroute2 forks netns helpers) inherit, so a signal sent to such a
    helper would reach our loop as if it were meant for the supervisor. A forked copy that gets
    the signal restores the default action and re-raises it on itself.
    """
    loop = asyncio.get_running_loop()
    owner = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


async def run_supervisor(cfg: SupervisorConfig) -> int:
    """Run the sandbox until SIGTERM/SIGINT; always tear it down. Returns the exit code."""
    sup = Supervisor(cfg)
    stop = asyncio.Event()
    install_stop_handlers(stop)
    code = 0

    async def body() -> None:
        await sup.start()
        await sup.watch()

    main = asyncio.create_task(body())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if main.done() and main.exception() is not None:
            exc = main.exception()
            log.error("sandbox %s failed: %s", cfg.sandbox_id, exc, exc_info=exc)
            sup.status.phase = "failed"
            sup.status.error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                sup._write()
            code = 1
            await stop.wait()  # keep the logs and namespaces for `up` to show; it stops us
    finally:
        main.cancel()
        stopper.cancel()
        await asyncio.gather(main, stopper, return_exceptions=True)
        await sup.stop()
    return code
