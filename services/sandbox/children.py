"""The supervisor's child processes: start, restart after a crash (with backoff), stop in order.

Each child (nats-server, the API server, watcher, identity, one datapath worker per node) is a
:class:`Child` with a small restart loop: a crash is logged with its exit code and the child is
started again after a backoff that doubles up to 10 s and resets once a run lasted 30 s. Children
are started through ``launch --cgroup`` so they sit in the sandbox's ``weir-<id>/control``
cgroup: ``teardown_all`` (``cgroup.kill``) then reaches them even when the supervisor itself was
SIGKILLed. Each runs in its own session (a Ctrl-C on the supervisor's terminal reaches only the
supervisor, which stops the children in order), with stdout+stderr appended to its log file.

Readiness is the child's own ``/readyz`` (every Weir service serves it with ``--metrics-listen``);
the timing policy (:func:`next_backoff`) is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from services.sandbox.procs import LAUNCH_MODULE
from services.sandbox.runinfo import ProcessInfo

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0


def next_backoff(current: float, ran_for: float) -> float:
    """Delay before the next restart, given the current delay and how long the last run lasted."""
    if ran_for >= STABLE_AFTER:
        return BACKOFF_FIRST
    return min(max(current, BACKOFF_FIRST / 2) * 2, BACKOFF_MAX)


@dataclass
class ChildSpec:
    name: str
    argv: Sequence[str]
    log: Path
    cgroup: Path | None = None
    metrics_url: str = ""  # http://HOST:PORT of its ops server; "" -> ready once running
    env: Mapping[str, str] = field(default_factory=dict)  # added to the supervisor's environment

    def command(self) -> list[str]:
        if self.cgroup is None:
            return list(self.argv)
        launch = [sys.executable, "-m", LAUNCH_MODULE, "--cgroup", str(self.cgroup), "--"]
        return [*launch, *self.argv]


@dataclass
class Child:
    spec: ChildSpec
    on_event: Callable[[], None] = lambda: None
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: bool = False
    _stopping: bool = False
    _started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def info(self) -> ProcessInfo:
        return ProcessInfo(
            name=self.name,
            pid=self.proc.pid if self.proc is not None else 0,
            metrics_url=self.spec.metrics_url,
            log=str(self.spec.log),
            restarts=self.restarts,
            running=self.running,
            ready=self.ready,
        )

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log, "ab") as out:  # noqa: ASYNC230 - local tmpfs, instant
            out.write(
                f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.spec.argv)}\n".encode()
            )
            out.flush()
            return await asyncio.create_subprocess_exec(
                *self.spec.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.spec.env},
            )

    async def run(self) -> None:
        """Keep the child running until :meth:`stop` (or cancellation)."""
        backoff = BACKOFF_FIRST
        while not self._stopping:
            began = time.monotonic()
            self.proc = await self._spawn()
            self.ready = False
            self._started.set()
            log.info("started %s (pid %d)", self.name, self.proc.pid)
            self.on_event()
            code = await self.proc.wait()
            self.ready = False
            self.on_event()
            if self._stopping:
                return
            backoff = next_backoff(backoff, time.monotonic() - began)
            self.restarts += 1
            log.warning(
                "%s (pid %d) exited with %s; restart %d in %.1fs; log %s",
                self.name,
                self.proc.pid,
                code,
                self.restarts,
                backoff,
                self.spec.log,
            )
            await asyncio.sleep(backoff)

    async def wait_started(self) -> None:
        await self._started.wait()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the restart loop ends."""
        self._stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", self.name, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def check_ready(self, session: aiohttp.ClientSession) -> bool:
        """Ask the child's /readyz (or: running, when it has no ops server)."""
        ready = False
        if self.running:
            if not self.spec.metrics_url:
                ready = True
            else:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.spec.metrics_url}/readyz", timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        ready = resp.status == 200
        if ready != self.ready:
            self.ready = ready
            self.on_event()
        return ready
