"""How ``weir datapath`` starts: only its own subcommand, nats-py without aiohttp, maps first.

Real processes against the real nats-server fixture: the worker process must still connect,
sync and publish its NodeStatus with the start-up shortcuts (``services.cli.main`` registering
only the datapath command, ``services.common.natsimport``, ``services.datapath.mapsopen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from nats.js.errors import NotFoundError

from contracts.subjects import STREAM_STATUS, status_subject
from contracts.v1 import NodeStatus
from services.common.bus import Bus
from tests.conftest import NatsServer, free_port

WEIR = str(Path(sys.executable).parent / "weir")


def test_weir_datapath_imports_no_other_subcommand() -> None:
    probe = textwrap.dedent(
        """
        import json, sys
        from services.cli import main
        sys.argv = ["weir", "datapath", "--help"]
        try:
            main.main()
        except SystemExit:
            pass
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("services."))))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--node" in done.stdout  # the datapath command's own help
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert "services.datapath.cli" in loaded
    others = ("services.ops", "services.apiserver", "services.sandbox", "services.watcher",
              "services.identity")  # fmt: skip
    assert not [m for m in loaded if m.startswith(others)]


def test_weir_help_still_lists_every_subcommand() -> None:
    from services.cli.main import COMMANDS, app  # noqa: PLC0415

    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == set(COMMANDS)


def _mapped(pid: int, needle: str) -> bool:
    return needle in Path(f"/proc/{pid}/maps").read_text()


async def _status(bus: Bus, node: str) -> NodeStatus | None:
    with contextlib.suppress(NotFoundError):
        msg = await bus.js.get_last_msg(STREAM_STATUS, status_subject(node))
        assert msg.data is not None
        return NodeStatus.model_validate_json(msg.data)
    return None


def _ready(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r,
    ):
        return bool(r.status == 200)
    return False


async def test_worker_process_runs_without_aiohttp_and_publishes_its_status(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    port = free_port()
    node = f"startup-{os.getpid()}"
    env = {**os.environ, "WEIR_NODE": node, "WEIR_NATS_URL": nats_server.url}
    cmd = [WEIR, "datapath", "--maps", "fake", "--metrics-listen", f"127.0.0.1:{port}"]
    log = (tmp_path / "weir.log").open("wb")
    proc = await asyncio.to_thread(subprocess.Popen, cmd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            if await asyncio.to_thread(_ready, port):
                status = await _status(bus, node)
                if status is not None:
                    break
            await asyncio.sleep(0.1)
        assert status is not None, (tmp_path / "weir.log").read_text()
        assert status.node == node and status.maps["services"].capacity > 0
        assert not _mapped(proc.pid, "/aiohttp/"), "the worker imported aiohttp"
        assert _mapped(proc.pid, "pydantic_core")  # the check above can see a package's .so
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
