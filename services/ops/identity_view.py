"""Identities as the allocator stores them in the KV bucket, as rows (pure).

Why read the KV and not the WEIR_IDENTITY stream: the KV is the allocator's source of truth
(``id.<n>`` -> canonical labels, ``labels.<sha256>`` -> ``n`` or a GC mark, ``ref.<n>.<allocator>``
per allocator using ``n``); the stream only announces changes. Showing the three key kinds side by
side exposes the states the protocol goes through: an id whose labels key is missing (claimed by
an allocator that crashed), one marked for GC (dying), one without references (collectable after
the grace period). Reserved identities are not in the KV; they come from the allocator's table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from contracts.subjects import SubjectError, unescape_token
from services.identity.allocator import parse_mapping
from services.identity.labels import LabelSet
from services.identity.reserved import RESERVED


class Entry(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def value(self) -> bytes: ...
    @property
    def revision(self) -> int: ...


def identity_rows(entries: Iterable[Entry]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for every ``id.<n>`` key (sorted by id) and problems naming each unreadable key."""
    labels: dict[int, list[str] | None] = {}
    revisions: dict[int, int] = {}
    mapped: dict[int, dict[str, Any]] = {}
    refs: dict[int, list[str]] = {}
    problems: list[str] = []
    for e in entries:
        kind, _, rest = e.key.partition(".")
        try:
            if kind == "id":
                ident = int(rest)
                revisions[ident] = e.revision
                try:
                    labels[ident] = list(LabelSet.from_canonical(e.value).labels)
                except ValueError as exc:
                    labels[ident] = None
                    problems.append(f"KV key {e.key}: value: unreadable label set: {exc}")
            elif kind == "labels":
                ident, dying = parse_mapping(e.value)
                mapped[ident] = {"digest": rest, "dying_since": dying}
            elif kind == "ref":
                num, _, owner = rest.partition(".")
                refs.setdefault(int(num), []).append(_owner(owner))
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"KV key {e.key}: not an identity key or value: {exc}")
    rows = []
    for ident in sorted(labels):
        m = mapped.get(ident)
        rows.append(
            {
                "id": ident,
                "labels": labels[ident],
                "reserved": False,
                "digest": m["digest"] if m else None,
                "mapped": m is not None,
                "dying": bool(m and m["dying_since"] is not None),
                "refs": sorted(refs.get(ident, [])),
                "revision": revisions[ident],
            }
        )
    return rows, problems


def _owner(token: str) -> str:
    try:
        return unescape_token(token)
    except SubjectError:
        return token


def reserved_rows() -> list[dict[str, Any]]:
    """The reserved identities (0..7), shaped like KV rows."""
    return [
        {
            "id": ident,
            "labels": [f"reserved:{name}"],
            "reserved": True,
            "digest": None,
            "mapped": True,
            "dying": False,
            "refs": [],
            "revision": None,
        }
        for ident, name in sorted(RESERVED.items())
    ]


def state(row: Mapping[str, Any]) -> str:
    """One word for the table: reserved, dying, orphaned (no labels key), unused, in-use."""
    if row["reserved"]:
        return "reserved"
    if row["dying"]:
        return "dying"
    if not row["mapped"]:
        return "orphaned"
    return "in-use" if row["refs"] else "unused"


def parse_identity(text: str) -> int:
    """An identity number from the command line; ValueError naming the input."""
    try:
        ident = int(text, 10)
    except ValueError:
        raise ValueError(f"identity {text!r}: not a number") from None
    if not 0 <= ident <= 65535:
        raise ValueError(f"identity {text!r}: out of range 0-65535")
    return ident
