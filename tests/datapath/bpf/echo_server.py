"""Echo servers for the BPF tests: each TCP/UDP listener answers with its own "ip:port".

Run inside the test's network namespace (``ip netns exec``); one process serves every address
given on the command line and prints ``ready`` once all sockets are bound, so the fixture knows
when to start clients. The answer names the backend that was reached, which is what the tests
assert on.
"""

from __future__ import annotations

import selectors
import socket
import sys


def main(addrs: list[str]) -> None:
    sel = selectors.DefaultSelector()
    for addr in addrs:
        ip, port = addr.rsplit(":", 1)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((ip, int(port)))
        tcp.listen(512)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((ip, int(port)))
        sel.register(tcp, selectors.EVENT_READ, ("tcp", addr))
        sel.register(udp, selectors.EVENT_READ, ("udp", addr))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            kind, addr = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if kind == "tcp":
                conn, _peer = sock.accept()
                try:
                    conn.sendall(addr.encode())
                finally:
                    conn.close()
            else:
                _data, peer = sock.recvfrom(2048)
                sock.sendto(addr.encode(), peer)


if __name__ == "__main__":
    main(sys.argv[1:])
