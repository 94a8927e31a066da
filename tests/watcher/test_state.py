"""Table tests for the pure published-state index and the relist diff."""

from __future__ import annotations

import pytest

from services.watcher.state import (
    Action,
    Delete,
    Fingerprint,
    Invalid,
    ObjectKey,
    Observation,
    PublishedIndex,
    Report,
    Upsert,
    Valid,
    decide_deleted,
    decide_present,
    decide_relist,
)

A = ObjectKey("service", "default", "a")
B = ObjectKey("service", "default", "b")
C = ObjectKey("service", "other", "c")
P = ObjectKey("pod", "default", "a")


def fp(uid: str = "u1", rv: str = "1", digest: str = "d1") -> Fingerprint:
    return Fingerprint(uid, rv, digest)


def valid(key: ObjectKey, uid: str = "u1", rv: str = "1", digest: str = "d1") -> Valid:
    return Valid(key, fp(uid, rv, digest), {"metadata": {"name": key.name, "uid": uid}})


def invalid(key: ObjectKey, rv: str = "9") -> Invalid:
    return Invalid(key, "u1", rv, "spec.ports[0].port", "must be 1..65535")


def index_of(**entries: Fingerprint) -> PublishedIndex:
    idx = PublishedIndex()
    keys = {"a": A, "b": B, "c": C, "p": P}
    for name, f in entries.items():
        idx.seed(keys[name], f)
    return idx


def kinds(actions: list[Action]) -> list[tuple[str, ObjectKey]]:
    return [(type(a).__name__, a.invalid.key if isinstance(a, Report) else a.key) for a in actions]


@pytest.mark.parametrize(
    ("index", "obs", "expected"),
    [
        (index_of(), valid(A), [("Upsert", A)]),
        (index_of(a=fp()), valid(A), []),
        # resourceVersion moved but the normalised content did not: nothing to say
        (index_of(a=fp(rv="1")), valid(A, rv="2"), []),
        (index_of(a=fp()), valid(A, rv="2", digest="d2"), [("Upsert", A)]),
        # same name, new uid: the object was re-created behind our back
        (index_of(a=fp()), valid(A, uid="u2", rv="5"), [("Delete", A), ("Upsert", A)]),
        (index_of(), invalid(A), [("Report", A)]),
        # a previously valid object turns invalid: report, keep the published state
        (index_of(a=fp()), invalid(A), [("Report", A)]),
    ],
)
def test_decide_present(index: PublishedIndex, obs: Observation, expected: list[object]) -> None:
    assert kinds(decide_present(index, obs)) == expected


def test_report_once_per_resource_version() -> None:
    idx = PublishedIndex()
    [first] = decide_present(idx, invalid(A, rv="9"))
    idx.record(first)
    assert decide_present(idx, invalid(A, rv="9")) == []
    assert kinds(decide_present(idx, invalid(A, rv="10"))) == [("Report", A)]


def test_recovered_object_is_published_again_and_report_forgotten() -> None:
    idx = index_of(a=fp())
    idx.record(Report(invalid(A, rv="9")))
    [up] = decide_present(idx, valid(A, rv="10", digest="d2"))
    idx.record(up)
    assert idx.get(A) == fp(rv="10", digest="d2")
    assert kinds(decide_present(idx, invalid(A, rv="9"))) == [("Report", A)]


@pytest.mark.parametrize(
    ("index", "uid", "expected"),
    [
        (index_of(a=fp()), "u1", [("Delete", A)]),
        (index_of(a=fp()), "", [("Delete", A)]),
        (index_of(), "u1", []),
        # a delete of an older incarnation must not delete the current one
        (index_of(a=fp(uid="u2")), "u1", []),
    ],
)
def test_decide_deleted(index: PublishedIndex, uid: str, expected: list[object]) -> None:
    assert kinds(decide_deleted(index, valid(A, uid=uid, rv="7"))) == expected
    # a final state that no longer validates still deletes what was published
    bad = Invalid(A, uid, "7", "spec", "broken")
    assert kinds(decide_deleted(index, bad)) == expected


@pytest.mark.parametrize(
    ("index", "listed", "expected"),
    [
        (index_of(), [], []),
        (index_of(), [valid(A), valid(B)], [("Upsert", A), ("Upsert", B)]),
        # vanished during the gap (410 or leader change): deleted, deletes first
        (index_of(a=fp(), b=fp()), [valid(B), valid(C)], [("Delete", A), ("Upsert", C)]),
        # other kinds are not touched by a service relist
        (index_of(p=fp()), [], []),
        # an invalid listed object is present, so no delete; it is reported
        (index_of(a=fp()), [invalid(A)], [("Report", A)]),
        # duplicates in a listing are taken once
        (index_of(), [valid(A), valid(A)], [("Upsert", A)]),
        (index_of(a=fp(), b=fp()), [valid(A), valid(B)], []),
    ],
)
def test_decide_relist(
    index: PublishedIndex, listed: list[Observation], expected: list[object]
) -> None:
    assert kinds(decide_relist(index, "service", listed)) == expected


def test_nothing_twice_after_recording() -> None:
    idx = index_of(a=fp(), b=fp())
    listing: list[Observation] = [valid(B, digest="d2"), valid(C), invalid(A)]
    first = decide_relist(idx, "service", listing)
    for action in first:
        idx.record(action)
    assert decide_relist(idx, "service", listing) == []


def test_failed_publish_is_retried_by_next_relist() -> None:
    idx = index_of(a=fp())
    actions = decide_relist(idx, "service", [valid(B)])
    assert kinds(actions) == [("Delete", A), ("Upsert", B)]
    idx.record(actions[0])  # the upsert never reached the bus
    assert kinds(decide_relist(idx, "service", [valid(B)])) == [("Upsert", B)]
    assert isinstance(actions[0], Delete)
    assert isinstance(actions[1], Upsert)


@pytest.mark.parametrize("index", [index_of(), index_of(a=fp())], ids=["new", "changed"])
def test_upsert_carries_the_observation(index: PublishedIndex) -> None:
    obs = Valid(A, fp(digest="d2"), {"event": 1}, b'{"event":1}')
    (upsert,) = decide_present(index, obs)
    assert type(upsert) is Upsert
    assert upsert == Upsert(A, fp(digest="d2"), {"event": 1}, b'{"event":1}')
    assert (upsert.key, upsert.fingerprint, upsert.payload, upsert.data) == tuple(obs)
