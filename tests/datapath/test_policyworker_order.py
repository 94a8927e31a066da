"""The policy loop's pure decisions: write order of a diff, and stable endpoint ids."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.datapath.fakepolicymaps import FakePolicyMaps
from services.datapath.policy_sync import EndpointIds, apply_plan, plan_writes
from services.datapath.policymap import (
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
    PolicyState,
)


class Recording(FakePolicyMaps):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def update_policy(self, keys: Iterable[PolicyKey]) -> None:
        self.calls.append("policy+")
        super().update_policy(keys)

    def delete_policy(self, keys: Iterable[PolicyKey]) -> None:
        self.calls.append("policy-")
        super().delete_policy(keys)

    def update_endpoints(self, items: Mapping[EndpointKey, EndpointValue]) -> None:
        self.calls.append("endpoints+")
        super().update_endpoints(items)

    def delete_endpoints(self, keys: Iterable[EndpointKey]) -> None:
        self.calls.append("endpoints-")
        super().delete_endpoints(keys)


ALLOW = PolicyKey(1, Direction.INGRESS, 6, 300, 8080, 16)
OPEN = EndpointValue(1, 301)
ENFORCED = EndpointValue(1, 301, EndpointFlags.ENFORCE_INGRESS)


def test_enforce_is_set_after_its_allow_entries_and_cleared_before_they_go() -> None:
    maps = Recording()
    mirror = PolicyState({EndpointKey(7): OPEN}, {CidrKey("10.0.0.1/32"): 300})
    maps.update_endpoints(mirror.endpoints)
    maps.update_ipcache(mirror.ipcache)
    maps.calls.clear()
    tight = PolicyState({EndpointKey(7): ENFORCED}, dict(mirror.ipcache), {ALLOW})
    apply_plan(maps, plan_writes(mirror, tight), mirror)
    assert maps.calls == ["policy+", "endpoints+"] and mirror == maps.dump() == tight
    maps.calls.clear()
    loose = PolicyState({EndpointKey(7): OPEN}, dict(mirror.ipcache))
    apply_plan(maps, plan_writes(mirror, loose), mirror)
    assert maps.calls == ["endpoints+", "policy-"] and mirror == maps.dump() == loose
    assert plan_writes(mirror, loose).writes() == 0


def test_endpoint_ids_stable_restored_and_not_reused_at_once() -> None:
    ids = EndpointIds()
    ids.restore({EndpointKey(11): EndpointValue(5, 300)})
    got = ids.assign({"a/web": 11, "a/api": 12}, avoid=set())
    assert got == {"a/web": 5, "a/api": 1}  # web keeps its pinned id
    got = ids.assign({"a/api": 12, "a/new": 13}, avoid=set())
    assert got["a/api"] == 1 and got["a/new"] not in (1, 5)  # 5 was just released
    assert ids.assign({"a/x": 20}, avoid={2, 3})["a/x"] not in (1, 2, 3)
