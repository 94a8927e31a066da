"""The built-in workload of a sandbox pod without a command: answer every request with its name.

``python -m services.sandbox.echo --name POD --tcp 8080 --udp 8080``

Tests and users need a workload that proves WHICH backend a connection reached, for TCP and UDP,
with nothing installed in the pod. Protocol: TCP, every received line (``\\n``-terminated; a
final unterminated chunk counts too) is answered with ``<name>\\n``; UDP, every datagram is
answered with ``<name>\\n`` to its sender. Listens on 0.0.0.0 (inside the pod's netns, so only
the pod's own address and loopback exist). Prints one ``listening <proto> <port>`` line per
socket, then ``ready``, so a spawner can wait for readiness by reading its log.

Stdlib only (asyncio), so it starts fast in every pod.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast


def reply_for(name: str) -> bytes:
    return f"{name}\n".encode()


async def _handle_tcp(
    name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    answer = reply_for(name)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(answer)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.answer = reply_for(name)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.answer, addr)


async def serve(
    name: str, tcp_ports: list[int], udp_ports: list[int], host: str = "0.0.0.0"
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers: list[asyncio.AbstractServer] = []
    transports: list[asyncio.BaseTransport] = []
    for port in tcp_ports:
        server = await asyncio.start_server(
            lambda r, w: _handle_tcp(name, r, w), host, port, reuse_address=True
        )
        servers.append(server)
        print(f"listening tcp {port}", flush=True)
    for port in udp_ports:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpEcho(name), local_addr=(host, port)
        )
        transports.append(transport)
        print(f"listening udp {port}", flush=True)
    print("ready", flush=True)
    await stop.wait()
    for listener in servers:
        listener.close()
    for endpoint in transports:
        endpoint.close()


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {text}: not 1-65535")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.sandbox.echo")
    parser.add_argument("--name", required=True, help="the name to answer with (the pod's)")
    parser.add_argument("--tcp", type=_port, action="append", default=[], help="TCP port")
    parser.add_argument("--udp", type=_port, action="append", default=[], help="UDP port")
    args = parser.parse_args(argv)
    if not args.tcp and not args.udp:
        parser.error("give at least one --tcp or --udp port")
    try:
        asyncio.run(serve(args.name, args.tcp, args.udp))
    except OSError as exc:
        print(f"echo {args.name}: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
