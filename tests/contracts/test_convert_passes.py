"""The quick conversion pass (no paths) and the recording pass agree on every input.

A converter reshapes through :class:`QuickSrc` first and only reruns over :class:`Src` when the
quick input fails, and ``to_event`` reads well-formed metadata directly, the rest through the
checked reader. These tests hold the two halves of each pair to the same answer: the same model
input or the same failure, on the realistic fixtures and on Hypothesis' near-miss objects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.subjects import K8S_KINDS
from contracts.v1 import ContractError
from contracts.v1.convert import _KINDS, _metadata, _metadata_checked, _ref
from contracts.v1.raw import Out, QuickOut, QuickSrc, RawError, Src
from tests.contracts.conftest import FIXTURES, load
from tests.contracts.test_convert_fuzz import KEYS, json_values

NOW = datetime(2024, 5, 1, tzinfo=UTC)
REALISTIC = sorted(p.name for p in FIXTURES.glob("*-realistic*.yaml"))


def _reshaped(kind: str, src: Src) -> tuple[str, Any]:
    reshape, _ = _KINDS[kind]
    try:
        return "ok", reshape(src).data
    except RawError as exc:
        return "raw-error", type(exc)


def _metadata_outcome(kind: str, obj: dict[str, Any], checked: bool) -> tuple[str, Any]:
    read = _metadata_checked if checked else _metadata
    try:
        return "ok", read(kind, obj, *_ref(obj))
    except ContractError as exc:
        return "error", (exc.field, exc.message)


@pytest.mark.parametrize("name", REALISTIC)
def test_quick_pass_builds_the_recorded_input(name: str) -> None:
    kind = name.split("-", maxsplit=1)[0]
    obj = load(name)
    quick, recorded = _reshaped(kind, QuickSrc(obj)), _reshaped(kind, Src(obj))
    assert quick == recorded
    assert quick[0] == "ok"


def test_quick_nodes_keep_no_paths() -> None:
    obj = load("service-realistic.yaml")
    reshape, _ = _KINDS["service"]
    assert type(reshape(QuickSrc(obj))) is QuickOut
    assert type(reshape(Src(obj))) is Out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(K8S_KINDS), st.dictionaries(st.sampled_from(KEYS), json_values))
def test_quick_and_recording_passes_agree_on_anything(kind: str, obj: dict[str, Any]) -> None:
    assert _reshaped(kind, QuickSrc(obj)) == _reshaped(kind, Src(obj))


names = st.sampled_from(["web", "a.b", "Bad_Name", "", "x" * 70, "svc-1"])
strings_or_junk = st.one_of(st.none(), names, st.integers(0, 3), st.lists(names, max_size=1))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(K8S_KINDS),
    st.fixed_dictionaries(
        {},
        optional={
            "name": strings_or_junk,
            "namespace": strings_or_junk,
            "uid": strings_or_junk,
            "resourceVersion": strings_or_junk,
        },
    ),
    st.booleans(),
)
def test_metadata_fast_read_agrees_with_the_checked_one(
    kind: str, meta: dict[str, Any], as_object: bool
) -> None:
    obj: dict[str, Any] = {"metadata": meta if as_object else [meta]}
    assert _metadata_outcome(kind, obj, checked=False) == _metadata_outcome(kind, obj, checked=True)
