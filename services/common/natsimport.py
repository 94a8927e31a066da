"""Import nats-py without its websocket transport when no server URL needs it.

Why: ``nats.aio.transport`` does ``try: import aiohttp`` at import time, only for
``WebSocketTransport`` (``ws://`` / ``wss://`` servers). aiohttp's client costs a starting
process ~0.15 s of CPU, which a datapath worker pays on the path from spawn to a synced node
(issue 6: the cold sync is measured from spawn). A worker that talks ``nats://`` or ``tls://``
never touches it.

How, in this one place and nowhere else: while ``nats.aio.transport`` is first imported,
``sys.modules["aiohttp"]`` is ``None``, so nats-py's own ``except ImportError`` branch runs (its
documented behaviour when aiohttp is not installed: ``aiohttp = None``, and asking for a
websocket server raises an ImportError that says so). The entry is removed right after, so
aiohttp stays importable for anything else in the process. Nothing of nats-py is patched or
copied. When nats-py or aiohttp is already imported, or any URL is a websocket one, this
imports nats-py as usual.
"""

from __future__ import annotations

import importlib
import sys

_WEBSOCKET = ("ws://", "wss://")


def wants_websocket(servers: str) -> bool:
    """Whether any of the comma-separated server URLs is a websocket one."""
    return any(url.strip().lower().startswith(_WEBSOCKET) for url in servers.split(","))


def import_nats(servers: str) -> bool:
    """Import nats-py for ``servers``; True when it was imported without aiohttp."""
    if "nats.aio.transport" in sys.modules or "aiohttp" in sys.modules or wants_websocket(servers):
        importlib.import_module("nats.aio.client")
        return False
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # -> ImportError in nats-py's try
    try:
        importlib.import_module("nats.aio.client")
    finally:
        if sys.modules.get("aiohttp", False) is None:
            del sys.modules["aiohttp"]
    return True
