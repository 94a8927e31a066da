"""Pure decision logic of the bus helpers, table-tested (no server needed)."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from services.common.bus import reconnect_delay
from services.common.consume import FailureAction, failure_action
from services.common.streams import config_diff, default_streams


@pytest.mark.parametrize(
    ("delivered", "expected"),
    [
        (1, FailureAction("nak", 0.2)),
        (2, FailureAction("nak", 0.4)),
        (4, FailureAction("nak", 1.6)),
        (5, FailureAction("term", 0.0)),
        (9, FailureAction("term", 0.0)),
    ],
)
def test_failure_action(delivered: int, expected: FailureAction) -> None:
    got = failure_action(delivered, max_deliver=5, base_delay=0.2, max_delay=10.0)
    assert got.verb == expected.verb and got.delay == pytest.approx(expected.delay)


def test_failure_action_caps_delay_and_unbounded_never_terms() -> None:
    assert failure_action(30, max_deliver=0, base_delay=0.2, max_delay=10.0) == ("nak", 10.0)


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(0, 0.04, 0.06), (3, 0.32, 0.48), (50, 1.6, 2.4)]
)
def test_reconnect_delay_bounds(attempt: int, low: float, high: float) -> None:
    for _ in range(50):
        assert low <= reconnect_delay(attempt) <= high


def test_config_diff_names_changed_fields_only() -> None:
    k8s = default_streams()[0]
    current = k8s.config()
    assert config_diff(current, k8s.fields) == []
    # The server reports enums as strings and floats from nanoseconds; both compare equal.
    as_server = StreamConfig.from_response(current.as_dict())
    assert config_diff(as_server, k8s.fields) == []
    changed = current.evolve(max_msgs_per_subject=3, storage=StorageType.MEMORY)
    assert sorted(config_diff(changed, k8s.fields)) == ["max_msgs_per_subject", "storage"]
    assert config_diff(current.evolve(subjects=["x.>"]), k8s.fields) == ["subjects"]
    assert config_diff(current.evolve(duplicate_window=60.0), k8s.fields) == ["duplicate_window"]
    assert config_diff(current.evolve(discard=DiscardPolicy.NEW), k8s.fields) == ["discard"]
