"""Benchmark backend: accept and close TCP connections on each address given, port 8080.

connect() returns once the kernel has answered the SYN, so the accept loop's speed is not part of
the measured latency; it only has to keep the backlog from overflowing.
"""

from __future__ import annotations

import socket
import sys
import threading

PORT = 8080


def serve(ip: str) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, PORT))
    s.listen(4096)
    while True:
        conn, _ = s.accept()
        conn.close()


if __name__ == "__main__":
    for address in sys.argv[1:]:
        threading.Thread(target=serve, args=(address,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
