"""Property tests of the subject layout: escaping is a bijection and yields legal NATS tokens."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.subjects import (
    CLUSTER_SCOPE_TOKEN,
    CLUSTER_SCOPED_KINDS,
    K8S_KINDS,
    SubjectError,
    escape_token,
    k8s_subject,
    parse_k8s_subject,
    unescape_token,
)

# NATS: a token is non-empty and has no '.', '*', '>' or white space; we also keep it ASCII.
NATS_TOKEN = re.compile(r"[!-~]+")
FORBIDDEN = set(".*>")
names = st.text(min_size=1, max_size=80)


@given(names)
def test_escape_round_trip(value: str) -> None:
    assert unescape_token(escape_token(value)) == value


@given(names)
def test_escaped_token_is_a_legal_nats_token(value: str) -> None:
    token = escape_token(value)
    assert NATS_TOKEN.fullmatch(token)
    assert not FORBIDDEN & set(token)
    assert token != CLUSTER_SCOPE_TOKEN


@given(names, names)
def test_escape_is_injective(a: str, b: str) -> None:
    assert (escape_token(a) == escape_token(b)) == (a == b)


@given(st.sampled_from(K8S_KINDS), names, names)
def test_k8s_subject_round_trip(kind: str, namespace: str, name: str) -> None:
    subject = k8s_subject(kind, namespace, name)
    tokens = subject.split(".")
    assert len(tokens) == 6 and all(NATS_TOKEN.fullmatch(t) for t in tokens)
    expected_ns = None if kind in CLUSTER_SCOPED_KINDS else namespace
    assert parse_k8s_subject(subject) == (kind, expected_ns, name)


@pytest.mark.parametrize("token", ["", "a.b", "_zz", "_4", "a b", "_ff", "_c3"])
def test_unescape_rejects_tokens_escape_cannot_produce(token: str) -> None:
    with pytest.raises(SubjectError):
        unescape_token(token)
