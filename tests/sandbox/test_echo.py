"""The built-in echo server, run exactly as pods run it, on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import free_port


@pytest.fixture
def echo() -> Iterator[tuple[int, int]]:
    tcp, udp = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.sandbox.echo",
            "--name",
            "web-0",
            "--tcp",
            str(tcp),
            "--udp",
            str(udp),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().decode().strip() for _ in range(3)]
        assert lines == [f"listening tcp {tcp}", f"listening udp {udp}", "ready"]
        yield tcp, udp
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0  # SIGTERM is a clean shutdown


def test_tcp_answers_every_line_with_the_name(echo: tuple[int, int]) -> None:
    with socket.create_connection(("127.0.0.1", echo[0]), timeout=3) as conn:
        conn.sendall(b"one\ntwo\n")
        data = b""
        while data.count(b"\n") < 2:
            data += conn.recv(100)
        assert data == b"web-0\nweb-0\n"


def test_udp_answers_every_datagram_with_the_name(echo: tuple[int, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for _ in range(2):
            s.sendto(b"ping", ("127.0.0.1", echo[1]))
            assert s.recvfrom(100)[0] == b"web-0\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x"], "give at least one --tcp or --udp port"),
        (["--name", "x", "--tcp", "70000"], "port 70000: not 1-65535"),
        (["--tcp", "80"], "the following arguments are required: --name"),
    ],
)
def test_bad_arguments_are_explained(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.sandbox.echo", *args], capture_output=True, check=False
    )
    assert done.returncode == 2
    assert message in done.stderr.decode()
