"""Process settings shared by every Weir service, read from ``WEIR_*`` environment variables.

Why pydantic-settings: the CLI declares every option with ``envvar="WEIR_<NAME>"``, and the same
names must work when a service is embedded (sandbox, tests) without the CLI. A service subclasses
:class:`WeirSettings` and adds its own fields; validation errors name the variable, so a bad
value fails at start-up with a clear message instead of deep inside the bus code.

``metrics_listen`` is ``HOST:PORT`` for the ops server (``/metrics``, ``/healthz``, ``/readyz``);
an empty string disables it, port 0 picks a free port.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_listen(value: str) -> tuple[str, int] | None:
    """``"host:port"`` (``[v6]:port`` too) -> (host, port); ``""`` -> None (disabled)."""
    value = value.strip()
    if not value:
        return None
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError(f"listen address {value!r}: expected HOST:PORT (empty disables)")
    port = int(port_s)
    if port > 65535:
        raise ValueError(f"listen address {value!r}: port {port} out of range 0-65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


class WeirSettings(BaseSettings):
    """Settings common to all Weir processes (env prefix ``WEIR_``)."""

    model_config = SettingsConfigDict(env_prefix="WEIR_", extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    metrics_listen: str = ""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    node_name: str = ""

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, v: str) -> str:
        for url in v.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"nats_url {url!r}: expected nats://HOST:PORT (comma-separated)")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        parse_listen(v)
        return v.strip()

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level {v!r}: expected one of {', '.join(LOG_LEVELS)}")
        return level

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level))
