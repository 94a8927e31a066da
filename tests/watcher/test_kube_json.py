"""kube.parse_json reads every body exactly as ``json.loads`` does, or fails as it fails.

The fast parser (pydantic-core) takes what it accepts; the rest (lone surrogates, a byte-order
mark, bad UTF-8) goes to the stdlib, so the watcher's view of an API response never depends on
which parser read it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.watcher.kube import KubeError, _parse_event, parse_json

json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(json_docs)
def test_reads_what_json_loads_reads(doc: Any) -> None:
    body = json.dumps(doc).encode()
    assert parse_json(body) == json.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\\ud800"}',  # a lone surrogate: pydantic-core rejects it, json accepts it
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte-order mark
        b'{"a": NaN, "b": 1e400, "c": 123456789012345678901234567890}',
        b'{"a": 1, "a": 2}',  # a duplicate key: the last one wins
    ],
)
def test_edge_cases_read_as_json_loads_reads_them(body: bytes) -> None:
    assert repr(parse_json(body)) == repr(json.loads(body))


@pytest.mark.parametrize("body", [b'{"a": ', b'{"a": "\xff"}', b"", b"[1,]"])
def test_what_json_loads_rejects_is_rejected(body: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises(ValueError):
        parse_json(body)


def test_a_garbled_watch_line_is_a_kube_error() -> None:
    with pytest.raises(KubeError, match="garbled watch line"):
        _parse_event("service", b'{"type": "ADDED", "object": ')
    event = _parse_event(
        "service", b'{"type": "ADDED", "object": {"metadata": {"name": "\\ud800"}}}'
    )
    assert event.type == "ADDED" and event.obj == {"metadata": {"name": "\ud800"}}
