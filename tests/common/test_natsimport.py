"""nats-py imported without aiohttp still connects, publishes to JetStream and reads back.

Each case runs in a fresh interpreter (this test process imported nats-py with aiohttp long
ago), against the real nats-server fixture.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

from contracts.subjects import STREAM_STATUS
from services.common.bus import Bus
from services.common.natsimport import wants_websocket
from tests.conftest import NatsServer

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from services.common.natsimport import import_nats
    without = import_nats(sys.argv[1])
    import nats.aio.transport as transport
    from services.common.bus import connect_bus, provision, publish

    async def main() -> int:
        bus = await connect_bus(sys.argv[1], "natsimport-test")
        try:
            await provision(bus.js)
            ack = await publish(bus.js, "weir.v1.status.natsimport", b'{"n": 1}', msg_id="ni-1")
            return int(ack.seq)
        finally:
            await bus.close()

    seq = asyncio.run(main())
    state = {"without": without, "transport_aiohttp": transport.aiohttp is not None,
             "aiohttp_loaded": "aiohttp" in sys.modules, "seq": seq}
    import aiohttp  # still importable by anything else in the process
    state["aiohttp_after"] = aiohttp.__name__
    print(json.dumps(state))
    """
)


def _child(url: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CHILD, url], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


async def test_nats_without_aiohttp_connects_and_publishes(
    nats_server: NatsServer, bus: Bus
) -> None:
    state = await asyncio.to_thread(_child, nats_server.url)
    assert state["without"] is True
    assert state["transport_aiohttp"] is False and state["aiohttp_loaded"] is False
    assert state["aiohttp_after"] == "aiohttp"
    msg = await bus.js.get_msg(STREAM_STATUS, int(str(state["seq"])))
    assert msg.subject == "weir.v1.status.natsimport" and msg.data == b'{"n": 1}'


def test_websocket_urls_keep_the_websocket_transport() -> None:
    assert wants_websocket("nats://a:4222, WS://b:80")
    assert not wants_websocket("nats://a:4222,tls://b:4443")
    probe = textwrap.dedent(
        """
        import sys
        from services.common.natsimport import import_nats
        assert import_nats("nats://127.0.0.1:4222,wss://h:443") is False
        import nats.aio.transport as transport
        assert transport.aiohttp is not None
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
