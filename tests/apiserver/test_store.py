"""The pure store: resourceVersions, event log, compaction, watch replay and filtering."""

from __future__ import annotations

from typing import Any

import pytest

from services.apiserver.resources import BY_PATH
from services.apiserver.status import ApiError
from services.apiserver.store import Store, Watch, parse_rv

PODS = BY_PATH[("", "v1", "pods")]
SVCS = BY_PATH[("", "v1", "services")]


def obj(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}}


def drain(w: Watch) -> list[tuple[str, str, int]]:
    out = []
    while not w.queue.empty():
        ev = w.queue.get_nowait()
        assert ev is not None
        out.append((ev.type, ev.obj["metadata"]["name"], ev.rv))
    return out


def test_one_global_resource_version_orders_all_kinds() -> None:
    s = Store()
    a = s.create(PODS, "default", obj("a"))
    b = s.create(SVCS, "default", obj("b"))
    a2 = s.update(PODS, "default", {**a, "spec": {"x": 1}})
    assert [x["metadata"]["resourceVersion"] for x in (a, b, a2)] == ["1", "2", "3"]
    assert s.rv == 3
    items, rv = s.list(PODS)
    assert rv == 3 and [i["metadata"]["name"] for i in items] == ["a"]


def test_errors_are_kubernetes_statuses() -> None:
    s = Store()
    s.create(PODS, "default", obj("a"))
    with pytest.raises(ApiError) as exc:
        s.create(PODS, "default", obj("a"))
    assert (exc.value.code, exc.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as exc:
        s.update(PODS, "default", obj("a"), expected_rv="999")
    assert (exc.value.code, exc.value.reason) == (409, "Conflict")
    with pytest.raises(ApiError) as exc:
        s.get(PODS, "other", "a")
    assert exc.value.code == 404 and exc.value.message == 'pods "a" not found'
    with pytest.raises(ApiError) as exc:
        s.delete(SVCS, "default", "a")
    assert exc.value.code == 404


def test_caller_mutation_does_not_reach_the_store() -> None:
    s = Store()
    src = obj("a")
    s.create(PODS, "default", src)
    src["metadata"]["name"] = "changed"
    assert s.get(PODS, "default", "a")["metadata"]["name"] == "a"


def test_watch_replays_after_rv_then_follows_live() -> None:
    s = Store()
    s.create(PODS, "default", obj("a"))
    s.create(PODS, "default", obj("b"))
    s.create(SVCS, "default", obj("not-a-pod"))
    w = s.watch(PODS, None, since_rv=1)
    assert drain(w) == [("ADDED", "b", 2)]
    s.delete(PODS, "default", "a")
    assert drain(w) == [("DELETED", "a", 4)]
    s.stop_watch(w)
    s.create(PODS, "default", obj("c"))
    assert drain(w) == []
    assert s.open_watches == 0


def test_watch_from_now_sends_current_state_as_added() -> None:
    s = Store()
    s.create(PODS, "ns1", obj("a", "ns1"))
    s.create(PODS, "ns2", obj("b", "ns2"))
    w = s.watch(PODS, "ns2", since_rv=None)
    assert drain(w) == [("ADDED", "b", 2)]
    s.create(PODS, "ns1", obj("c", "ns1"))
    assert drain(w) == []


def test_retained_window_and_forced_compaction() -> None:
    s = Store(retain_events=2)
    for name in "abcd":
        s.create(PODS, "default", obj(name))
    assert s.compacted_rv == 2
    with pytest.raises(ApiError) as exc:
        s.watch(PODS, None, since_rv=1)
    assert (exc.value.code, exc.value.reason) == (410, "Expired")
    assert drain(s.watch(PODS, None, since_rv=2)) == [("ADDED", "c", 3), ("ADDED", "d", 4)]
    assert s.compact() == 4
    with pytest.raises(ApiError):
        s.watch(PODS, None, since_rv=3)
    assert drain(s.watch(PODS, None, since_rv=4)) == []
    with pytest.raises(ApiError):
        s.check_not_compacted(3, "too old")
    s.check_not_compacted(4, "too old")


def test_filtered_watch_turns_label_changes_into_add_and_delete() -> None:
    s = Store()
    cur = s.create(PODS, "default", obj("a", app="db"))
    w = s.watch(PODS, None, since_rv=cur_rv(cur), predicate=lambda o: _app(o) == "web")
    cur = s.update(PODS, "default", obj("a", app="web"))
    cur = s.update(PODS, "default", {**obj("a", app="web"), "spec": {"x": 1}})
    cur = s.update(PODS, "default", obj("a", app="db"))
    s.delete(PODS, "default", "a")
    assert [t for t, _, _ in drain(w)] == ["ADDED", "MODIFIED", "DELETED"]


def test_close_watches_ends_streams() -> None:
    s = Store()
    w = s.watch(PODS, None, None)
    s.close_watches()
    assert w.queue.get_nowait() is None
    assert s.open_watches == 0


def test_parse_rv() -> None:
    assert parse_rv(None) is None and parse_rv("") is None
    assert parse_rv("0") == 0 and parse_rv("17") == 17
    with pytest.raises(ApiError) as exc:
        parse_rv("abc")
    assert exc.value.code == 400


def cur_rv(o: dict[str, Any]) -> int:
    return int(o["metadata"]["resourceVersion"])


def _app(o: dict[str, Any]) -> str | None:
    labels: dict[str, str] = o["metadata"].get("labels") or {}
    return labels.get("app")
