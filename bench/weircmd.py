"""Run one ``weir`` subcommand by its command function, e.g. ``python -m bench.weircmd watcher``.

The benchmarks start the same command functions ``weir`` registers (same options, same
``WEIR_*`` variables), but not through ``services/cli/main.py``, which imports every subcommand:
a benchmark of the datapath should not fail because an unrelated subcommand does not import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer


def _command(name: str) -> Callable[..., Any]:
    if name == "apiserver":
        from services.apiserver.cli import apiserver_command  # noqa: PLC0415

        return apiserver_command
    if name == "watcher":
        from services.watcher.cli import watcher_command  # noqa: PLC0415

        return watcher_command
    if name == "datapath":
        from services.datapath.cli import datapath_command  # noqa: PLC0415

        return datapath_command
    if name == "identity":
        from services.identity.cli import identity_command  # noqa: PLC0415

        return identity_command
    raise SystemExit(f"bench.weircmd: unknown command {name!r}")


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench.weircmd COMMAND [OPTIONS]")
    name = sys.argv.pop(1)
    sys.argv[0] = f"weir {name}"
    typer.run(_command(name))


if __name__ == "__main__":
    main()
