"""``weir watcher`` option handling: bad values fail fast with a message naming the option."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.cli.main import app


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nats", "http://x:1"], "nats_url"),
        (["--metrics-listen", "nope"], "listen address"),
        (["--lease-ttl", "1", "--lease-renew", "1"], "renew_deadline < ttl"),
        (["--log-format", "xml"], "log_format"),
    ],
)
def test_bad_options_exit_2_naming_the_option(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["watcher", *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_options_come_from_weir_env() -> None:
    result = CliRunner().invoke(app, ["watcher"], env={"WEIR_NATS_URL": "bogus://x"})
    assert result.exit_code == 2
    assert "bogus://x" in result.output
