"""Output of the inspection commands: one data shape, two renderings (rich tables or JSON).

Why this shape: every inspect command builds plain rows (dicts of JSON-able values with stable
keys) in a pure view module, and this module is the only place that knows how rows look on a
terminal. JSON is the contract for scripts: keys are stable and sorted, values are plain (no
markup), so ``-o json | jq`` keeps working when a table's layout changes. :class:`OpsError`
carries the operator-facing message and the exit code (1: cannot inspect or not found, 2: bad
input), so commands fail with one clear line instead of a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from rich.table import Table

EXIT_FAILURE = 1
EXIT_USAGE = 2


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"


class OpsError(Exception):
    """An inspection that cannot be done; ``str()`` is the message for the operator."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    justify: Literal["left", "right"] = "left"


def cell(value: Any) -> str:
    """One value as table text: None -> ``-``, lists joined, booleans yes/no, floats 1 decimal."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) if value else "-"
    return str(value)


def table(title: str, columns: Sequence[Column], rows: Iterable[Mapping[str, Any]]) -> Table:
    """A rich table of ``rows`` with one column per :class:`Column` (missing keys show ``-``)."""
    out = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        out.add_column(col.header, justify=col.justify, overflow="fold")
    for row in rows:
        out.add_row(*(cell(row.get(col.key)) for col in columns))
    return out


def dumps(data: Any) -> str:
    """Stable JSON: sorted keys, two-space indent, non-JSON values (datetimes) as strings."""
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def age(seconds: float | None) -> str:
    """A duration for humans: ``42s``, ``5m03s``, ``2h07m``, ``3d04h``; None -> ``-``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(nbytes: int) -> str:
    """Bytes for humans (binary units): ``512 B``, ``1.5 KiB``, ``3.0 MiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
