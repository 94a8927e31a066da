"""Whatever JSON arrives, conversion raises ContractError or succeeds: never another exception.

Hypothesis builds objects that look like each kind (the right top-level keys, so the converters
go deep) with arbitrary JSON values at every level.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.subjects import K8S_KINDS
from contracts.v1 import ContractError, K8sEvent, Op, from_k8s, to_event

NOW = datetime(2024, 5, 1, tzinfo=UTC)
KEYS = [
    "metadata", "spec", "status", "name", "namespace", "uid", "resourceVersion", "labels",
    "annotations", "ports", "port", "targetPort", "nodePort", "protocol", "clusterIP",
    "clusterIPs", "type", "selector", "endpoints", "addresses", "conditions", "ready",
    "serving", "addressType", "hints", "forZones", "targetRef", "podIPs", "ip", "podIP",
    "containers", "containerPort", "podCIDRs", "address", "podSelector", "ingress", "egress",
    "from", "to", "ipBlock", "cidr", "except", "endPort", "matchLabels", "matchExpressions",
    "key", "operator", "values", "policyTypes", "sessionAffinityConfig", "clientIP",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.text(max_size=12)
    | st.sampled_from(
        ["10.0.0.1", "fd00::1", "TCP", "None", "IPv4", "In", "10.0.0.0/8", "http", "True", "Ready"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=30,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(K8S_KINDS), st.dictionaries(st.sampled_from(KEYS), json_values))
def test_garbage_only_raises_contract_error(kind: str, obj: dict[str, Any]) -> None:
    try:
        payload = from_k8s(kind, obj)
    except ContractError as exc:
        assert exc.kind == kind and str(exc).startswith(kind)
    else:
        assert payload.kind == kind
    try:
        event = to_event(kind, Op.UPSERT, obj, "fuzz", NOW)
    except ContractError:
        pass
    else:
        assert K8sEvent.model_validate_json(event.model_dump_json()) == event


@given(st.sampled_from(K8S_KINDS), json_values)
def test_non_objects_are_contract_errors(kind: str, obj: Any) -> None:
    with contextlib.suppress(ContractError):
        from_k8s(kind, obj)
