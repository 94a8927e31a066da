"""The normaliser turns any API input into an observation; garbage becomes Invalid, never raises."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.v1 import K8sEvent
from contracts.v1.convert_fast import upsert_event
from services.watcher import observe
from services.watcher.observe import digest_of, make_normaliser
from services.watcher.state import Fingerprint, Invalid, ObjectKey, Observation, Valid
from tests.contracts.test_convert_fast import CASES
from tests.watcher.samples import sample

T0 = datetime(2024, 1, 1, tzinfo=UTC)
normalise = make_normaliser("test", clock=lambda: T0)


def stamped(kind: str, name: str, rv: str = "5") -> dict[str, Any]:
    obj = sample(kind, name)
    obj["metadata"].update(uid="uid-1", resourceVersion=rv)
    return obj


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ("not an object", ""),
        (["a", "list"], ""),
        ({"metadata": "nope"}, "metadata"),
        (
            {"metadata": {"name": "x", "namespace": "default", "uid": "u"}},
            "metadata.resourceVersion",
        ),
        (
            {
                "metadata": {
                    "name": "Bad_Name",
                    "namespace": "default",
                    "uid": "u",
                    "resourceVersion": "1",
                }
            },
            "metadata.name",
        ),
        (
            {**stamped("service", "s"), "spec": {"ports": [{"port": "placeholder"}]}},
            "spec.ports[0].port",
        ),
        (
            {
                **stamped("service", "s"),
                "metadata": {**stamped("service", "s")["metadata"], "labels": ["x"]},
            },
            "metadata.labels",
        ),
    ],
)
def test_garbage_becomes_invalid_with_field(obj: Any, field: str) -> None:
    obs = normalise("service", obj)
    assert isinstance(obs, Invalid)
    assert obs.field == field
    assert obs.message


def test_valid_object_key_and_fingerprint() -> None:
    obs = normalise("service", stamped("service", "web"))
    assert isinstance(obs, Valid)
    assert obs.key == ObjectKey("service", "default", "web")
    assert (obs.fingerprint.uid, obs.fingerprint.resource_version) == ("uid-1", "5")
    assert obs.fingerprint.digest == digest_of(obs.payload)


def test_cluster_scoped_key_has_no_namespace() -> None:
    obj = stamped("node", "n1.example")
    obj["metadata"]["namespace"] = "ignored"
    obs = normalise("node", obj)
    assert obs.key == ObjectKey("node", None, "n1.example")


def test_digest_ignores_resource_version_but_not_content() -> None:
    a = normalise("service", stamped("service", "web", rv="5"))
    b = normalise("service", stamped("service", "web", rv="6"))
    other = stamped("service", "web", rv="7")
    other["spec"]["ports"][0]["port"] = 81
    c = normalise("service", other)
    assert isinstance(a, Valid) and isinstance(b, Valid) and isinstance(c, Valid)
    assert a.fingerprint.digest == b.fingerprint.digest != c.fingerprint.digest


def test_digest_survives_a_round_trip_through_json() -> None:
    obs = normalise("pod", stamped("pod", "p"))
    assert isinstance(obs, Valid)
    back = K8sEvent.model_validate_json(obs.payload.model_dump_json())
    assert digest_of(back) == obs.fingerprint.digest


def test_valid_carries_the_event_serialised_once() -> None:
    obs = normalise("endpointslice", stamped("endpointslice", "web"))
    assert isinstance(obs, Valid)
    assert obs.data == obs.payload.model_dump_json().encode()
    assert K8sEvent.model_validate_json(obs.data) == obs.payload


def _contract_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Any], Observation]:
    """A normaliser as it was before the fast converter: the contract path for every object."""
    monkeypatch.setattr(observe, "upsert_event", lambda *args: None)
    return make_normaliser("test", clock=lambda: T0)


@pytest.mark.parametrize(("name", "kind", "obj", "fast"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_observation_is_the_contract_one(
    monkeypatch: pytest.MonkeyPatch, name: str, kind: str, obj: Any, fast: bool
) -> None:
    """Same Observation with and without the fast converter: key, fingerprint (digest), event,
    bytes; or the same Invalid (field and message) for input the contract rejects."""
    with_fast = normalise(kind, copy.deepcopy(obj))
    slow = _contract_only(monkeypatch)(kind, copy.deepcopy(obj))
    assert type(with_fast) is type(slow)
    assert with_fast == slow
    if isinstance(with_fast, Valid):
        assert isinstance(slow, Valid)
        assert with_fast.data == slow.data
        assert with_fast.fingerprint.digest == digest_of(with_fast.payload)
        assert type(with_fast.key) is ObjectKey and type(with_fast.fingerprint) is Fingerprint
    assert (upsert_event(kind, obj, "test", T0) is not None) == fast


def test_the_default_clock_stamps_utc_now() -> None:
    before = datetime.now(UTC)
    obs = make_normaliser("test")("service", stamped("service", "web"))
    assert isinstance(obs, Valid)
    assert before <= obs.payload.observed_at <= datetime.now(UTC)
    assert obs.payload.observed_at.tzinfo is UTC
