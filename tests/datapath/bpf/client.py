"""Client side of the BPF tests, run inside the test's netns AND cgroup (see conftest.run_client).

Commands (argv[1]) print one JSON document on stdout:

* ``tcp VIP PORT N``: N connects; per connect the backend's answer and getpeername(), or the
  errno name when connect() failed.
* ``udp VIP PORT N``: N unconnected sendto()/recvfrom(); the answer and the reply's source.
* ``udpconn VIP PORT``: connect() a UDP socket, send, recv; getpeername().
* ``loop VIP PORT SECONDS``: connect repeatedly for SECONDS; counts successes and failures.
* ``hold MODE VIP PORT``: one socket kept open, driven from stdin (one JSON line per answer).
  MODE ``tcp`` connects, ``udp`` connects, sends and recvfrom()s, ``udpsendto`` sendto()s and
  recvfrom()s unconnected. First line: the socket cookie (SO_COOKIE), the backend's answer,
  getpeername() (None unconnected) and the reply's source (UDP). Then per stdin line: ``peer``
  prints getpeername() again, ``close`` closes the socket and prints ``{"closed": true}``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import socket
import sys
import time


def tcp_once(vip: str, port: int) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((vip, port))
        except OSError as exc:
            return {"error": errno.errorcode.get(exc.errno or 0, str(exc))}
        peer = "{}:{}".format(*s.getpeername())
        answer = s.recv(64).decode()
        return {"backend": answer, "peer": peer}


def udp_once(vip: str, port: int) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        try:
            s.sendto(b"hi", (vip, port))
            data, src = s.recvfrom(64)
        except OSError as exc:
            return {"error": errno.errorcode.get(exc.errno or 0, str(exc))}
        return {"backend": data.decode(), "source": "{}:{}".format(*src)}


def udp_connected(vip: str, port: int) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((vip, port))
        s.send(b"hi")
        data = s.recv(64)
        return {"backend": data.decode(), "peer": "{}:{}".format(*s.getpeername())}


def udp_reconnected(vip: str, other: str, port: int) -> dict[str, object]:
    """connect(vip) and talk, disconnect (connect to AF_UNSPEC), then sendto(other): the source
    the second reply is shown with."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((vip, port))
        s.send(b"hi")
        s.recv(64)
        unspec = (ctypes.c_ubyte * 16)()  # struct sockaddr with sa_family 0 (AF_UNSPEC)
        if ctypes.CDLL(None, use_errno=True).connect(s.fileno(), unspec, 16) != 0:
            return {"error": errno.errorcode.get(ctypes.get_errno(), "disconnect failed")}
        s.sendto(b"hi", (other, port))
        data, src = s.recvfrom(64)
        return {"backend": data.decode(), "source": "{}:{}".format(*src)}


SO_COOKIE = 57  # Linux: the socket's cookie, what the BPF programs key their entries by


def _addr(pair: tuple[str, int]) -> str:
    return "{}:{}".format(*pair)


def hold(mode: str, vip: str, port: int) -> None:
    kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(3)
        cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
        first: dict[str, object] = {"cookie": cookie, "peer": None, "source": None}
        if mode == "tcp":
            s.connect((vip, port))
            first["backend"] = s.recv(64).decode()
        elif mode == "udp":
            s.connect((vip, port))
            s.send(b"hi")
            data, src = s.recvfrom(64)
            first |= {"backend": data.decode(), "source": _addr(src)}
        else:
            s.sendto(b"hi", (vip, port))
            data, src = s.recvfrom(64)
            first |= {"backend": data.decode(), "source": _addr(src)}
        if mode != "udpsendto":
            first["peer"] = _addr(s.getpeername())
        print(json.dumps(first), flush=True)
        for line in sys.stdin:
            if line.strip() == "peer":
                print(json.dumps({"peer": _addr(s.getpeername())}), flush=True)
            elif line.strip() == "close":
                break
    print(json.dumps({"closed": True}), flush=True)


def loop(vip: str, port: int, seconds: float) -> dict[str, object]:
    ok, failed, errors = 0, 0, set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = tcp_once(vip, port)
        if "error" in result:
            failed += 1
            errors.add(str(result["error"]))
        else:
            ok += 1
        time.sleep(0.002)
    return {"ok": ok, "failed": failed, "errors": sorted(errors)}


def main(argv: list[str]) -> None:
    if argv[0] == "hold":
        hold(argv[1], argv[2], int(argv[3]))
        return
    cmd, vip, port = argv[0], argv[1], int(argv[2])
    out: object
    if cmd == "tcp":
        out = [tcp_once(vip, port) for _ in range(int(argv[3]))]
    elif cmd == "udp":
        out = [udp_once(vip, port) for _ in range(int(argv[3]))]
    elif cmd == "udpconn":
        out = udp_connected(vip, port)
    elif cmd == "udpreconn":
        out = udp_reconnected(vip, argv[3], port)
    elif cmd == "loop":
        out = loop(vip, port, float(argv[3]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
