"""The ops HTTP server, settings parsing and log formatting (real sockets, real env vars)."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import aiohttp
import pytest
from pydantic import ValidationError

from services.common import metrics
from services.common.logging import setup_logging
from services.common.ops import readiness, start_ops_server
from services.common.settings import WeirSettings, parse_listen


async def test_ops_server_endpoints() -> None:
    state: dict[str, bool | str] = {"ready": "bootstrap not complete"}
    metrics.MESSAGES_ACKED.labels("S_OPS", "d_ops").inc(3)
    server = await start_ops_server("127.0.0.1:0", ready=lambda: state["ready"])
    assert server is not None and server.port > 0
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{server.url}/readyz") as r:
                assert r.status == 503
                assert "bootstrap not complete" in await r.text()
            state["ready"] = True
            async with http.get(f"{server.url}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{server.url}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                body = await r.text()
            assert 'weir_messages_acked_total{durable="d_ops",stream="S_OPS"} 3.0' in body
            assert "# TYPE weir_handler_duration_seconds histogram" in body
    finally:
        await server.close()


async def test_ops_server_readiness_check_raising_is_503() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    server = await start_ops_server("127.0.0.1:0", ready=broken)
    assert server is not None
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/readyz") as r:
            assert r.status == 503 and "boom" in await r.text()
    finally:
        await server.close()


async def test_ops_server_disabled_and_port_in_use() -> None:
    assert await start_ops_server("", ready=lambda: True) is None
    first = await start_ops_server("127.0.0.1:0", ready=lambda: True)
    assert first is not None
    try:
        with pytest.raises(OSError, match=r"ops server cannot listen on '127\.0\.0\.1:\d+'"):
            await start_ops_server(f"127.0.0.1:{first.port}", ready=lambda: True)
    finally:
        await first.close()


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_ops_server_keeps_a_connection_alive_across_polls() -> None:
    """A poller reuses one connection (readiness polled every few ms costs no connect each)."""
    calls: list[int] = []

    def check() -> bool | str:
        calls.append(1)
        return True if len(calls) >= 3 else "not yet"

    server = await start_ops_server("127.0.0.1:0", ready=check)
    assert server is not None
    try:
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=conn) as http:
            statuses = []
            for _ in range(3):
                async with http.get(f"{server.url}/readyz") as r:
                    statuses.append((r.status, await r.text()))
            assert statuses == [(503, "not yet\n"), (503, "not yet\n"), (200, "ok\n")]
            assert len(server._writers) == 1  # one connection served all three
            async with http.head(f"{server.url}/healthz") as r:
                assert r.status == 200 and r.headers["Content-Length"] == "3"
        # closing the server also ends idle keep-alive connections
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"ok\n")
        await server.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n", b"404"),
        (b"POST /readyz HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab", b"405"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /readyz HTTP/1.1\r\nbad header\r\n\r\n", b"400"),
        (b"GET /readyz HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"400"),
        (b"GET /readyz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"501"),
        (b"GET /readyz HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", b"413"),
        (b"GET /readyz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n", b"200"),  # HTTP/1.0: closed after
    ],
)
async def test_ops_server_answers_bad_requests_and_closes(raw: bytes, status: bytes) -> None:
    server = await start_ops_server("127.0.0.1:0", ready=lambda: True)
    assert server is not None
    try:
        answer = await _exchange(server.port, raw)  # returns only once the server closed
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
        # the server is still serving after it
        assert (await _exchange(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")).endswith(b"ok\n")
    finally:
        await server.close()


def test_readiness_interpretation() -> None:
    assert readiness(True) == (True, "ok")
    assert readiness(False) == (False, "not ready")
    assert readiness("waiting for bus") == (False, "waiting for bus")
    assert readiness("") == (False, "not ready")


def test_parse_listen() -> None:
    assert parse_listen("") is None
    assert parse_listen("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_listen(":9090") == ("0.0.0.0", 9090)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9090x", "host", "h:70000"):
        with pytest.raises(ValueError, match="listen address"):
            parse_listen(bad)


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIR_NATS_URL", "nats://127.0.0.1:4333")
    monkeypatch.setenv("WEIR_METRICS_LISTEN", "127.0.0.1:9100")
    monkeypatch.setenv("WEIR_LOG_LEVEL", "debug")
    monkeypatch.setenv("WEIR_LOG_FORMAT", "json")
    monkeypatch.setenv("WEIR_NODE_NAME", "node-1")
    cfg = WeirSettings()
    assert cfg.nats_url == "nats://127.0.0.1:4333"
    assert cfg.metrics_listen == "127.0.0.1:9100"
    assert cfg.log_level == "DEBUG" and cfg.log_level_number == logging.DEBUG
    assert cfg.log_format == "json" and cfg.node_name == "node-1"


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("WEIR_NATS_URL", "http://x", "nats_url"),
        ("WEIR_METRICS_LISTEN", "nope", "metrics_listen"),
        ("WEIR_LOG_LEVEL", "LOUD", "log_level"),
        ("WEIR_LOG_FORMAT", "xml", "log_format"),
    ],
)
def test_settings_errors_name_the_field(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=field):
        WeirSettings()


def test_json_logging_has_fields_and_extras() -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("info", "json", stream=buf)
        logging.getLogger("weir.test").info("applied %d", 3, extra={"node": "n1"})
        logging.getLogger("weir.test").debug("hidden")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["msg"] == "applied 3" and rec["level"] == "INFO" and rec["logger"] == "weir.test"
    assert rec["node"] == "n1" and rec["time"].endswith("+00:00")


def test_text_logging_and_bad_format() -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(logging.WARNING, "text", stream=buf)
        logging.getLogger("weir.t").warning("careful", extra={"obj": "pod/ns/x"})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert "WARNING weir.t: careful obj=pod/ns/x" in buf.getvalue()
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "xml")
