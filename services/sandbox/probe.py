"""``weir-probe tcp|udp HOST:PORT [--count N] [-o json]``: which backends answer a Service?

The demo and the end-to-end tests need one question answered from inside a pod: "if I connect to
this ClusterIP N times, which backends answer, what does ``getpeername()`` say, and does any
attempt fail?" Every attempt uses a NEW socket (a connected UDP socket for UDP), because the
socket-level load balancer picks a backend per connect(); it sends one line and reads one line,
which the sandbox's echo server answers with its pod name. ``getpeername()`` is recorded per
attempt: with socket-level LB it must show the Service address, not the backend's.

Stdlib only, so it starts fast inside a pod (``weir sandbox exec NS/POD -- weir-probe ...``).
Exit status: 0 if every attempt got an answer, 1 if any failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProbeResult:
    proto: str
    target: str
    answers: Counter[str] = field(default_factory=Counter)
    peers: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(self.answers.values())

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "target": self.target,
            "attempts": self.ok + self.failed,
            "ok": self.ok,
            "failed": self.failed,
            "answers": dict(sorted(self.answers.items())),
            "peers": dict(sorted(self.peers.items())),
            "errors": dict(sorted(self.errors.items())),
            "seconds": round(self.seconds, 4),
        }


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {text!r}: expected HOST:PORT with a port 1-65535")
    return host.strip("[]"), int(port)


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno  # noqa: PLC0415

        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def attempt(proto: str, host: str, port: int, payload: bytes, timeout: float) -> tuple[str, str]:
    """One connection: (answer line, getpeername as HOST:PORT). Raises OSError on failure."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        peer_host, peer_port = sock.getpeername()[:2]
        if proto == "tcp":
            sock.sendall(payload)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        else:
            sock.send(payload)
            data = sock.recv(65535)
    answer = data.decode("utf-8", errors="replace").strip()
    if not answer:
        raise ConnectionError("empty answer")
    return answer, f"{peer_host}:{peer_port}"


def probe(
    proto: str, host: str, port: int, count: int, timeout: float = 1.0, message: str = "hello"
) -> ProbeResult:
    result = ProbeResult(proto, f"{host}:{port}")
    payload = f"{message}\n".encode()
    started = time.perf_counter()
    for _ in range(count):
        try:
            answer, peer = attempt(proto, host, port, payload, timeout)
        except (OSError, ConnectionError) as exc:
            result.errors[_error_name(exc)] += 1
            continue
        result.answers[answer] += 1
        result.peers[peer] += 1
    result.seconds = time.perf_counter() - started
    return result


def render_text(result: ProbeResult) -> str:
    lines = [
        f"{result.proto} {result.target}: {result.ok}/{result.ok + result.failed} answered "
        f"in {result.seconds:.3f}s"
    ]
    width = max((len(a) for a in result.answers), default=0)
    for answer, n in sorted(result.answers.items()):
        lines.append(f"  {answer:<{width}}  {n:>5}  {'#' * min(n, 60)}")
    lines.append("  getpeername: " + ", ".join(f"{p} x{n}" for p, n in result.peers.items()))
    for err, n in sorted(result.errors.items()):
        lines.append(f"  FAILED {err} x{n}")
    return "\n".join(lines)


def repl(lines: Any = None) -> int:
    """``weir-probe repl``: one JSON result line per request line ``PROTO HOST:PORT COUNT``.

    For tests that probe many times and time convergence: one process in the pod, so a probe
    costs only its connections, not a process start and an exec into the pod.
    """
    for line in lines if lines is not None else sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            proto, target, count = parts[0], parts[1], int(parts[2])
            timeout = float(parts[3]) if len(parts) > 3 else 0.5
            if proto not in ("tcp", "udp") or count < 1:
                raise ValueError(f"request {line.strip()!r}: expected PROTO HOST:PORT COUNT")
            host, port = parse_target(target)
        except (ValueError, IndexError) as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            continue
        print(json.dumps(probe(proto, host, port, count, timeout).to_json()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["repl"]:
        return repl()
    parser = argparse.ArgumentParser(prog="weir-probe", description=__doc__.splitlines()[0])
    parser.add_argument("proto", choices=["tcp", "udp"])
    parser.add_argument("target", help="HOST:PORT, e.g. a ClusterIP and port")
    parser.add_argument("--count", "-n", type=int, default=10, help="connections (default 10)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per attempt")
    parser.add_argument("--message", default="hello", help="line to send")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count: must be >= 1")
    try:
        host, port = parse_target(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    result = probe(args.proto, host, port, args.count, args.timeout, args.message)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render_text(result))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
