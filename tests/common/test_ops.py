"""The ops HTTP server, settings parsing and log formatting (real sockets, real env vars)."""

from __future__ import annotations

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
