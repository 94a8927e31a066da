"""``explain``: why the datapath allows or drops one flow of one endpoint (pure, for debugging).

Why a separate module: it answers from the resolver's own intermediate results (which policies
select the pod, which rule produced which allow entry) rather than from the maps, so an operator
sees *policy and rule names*, not numbers; each entry is tested with the datapath model's
``policy_allows`` (the four lookups of bpf/policy.c), so the answer cannot drift from what the
kernel does with the same entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.datapath.fakepolicymaps import policy_allows
from services.datapath.policy import Context, endpoint_rules, selecting_policies, unique_policies
from services.datapath.policy_model import (
    ClusterPod,
    LocalEndpoint,
    PolicyIssue,
    PolicyRef,
    RuleRef,
)
from services.datapath.policymap import Direction, PolicyKey


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a flow to/from one endpoint is allowed or not (``weir`` debugging output)."""

    endpoint: str
    direction: Direction
    peer_identity: int
    proto: int
    port: int
    selected_by: tuple[str, ...]  # policies selecting the pod (any policyTypes)
    enforcing: tuple[str, ...]  # those listing this direction in policyTypes
    allowed: bool
    allowed_by: tuple[RuleRef, ...]  # rules with a matching entry (empty when default allow)

    def lines(self) -> list[str]:
        verdict = "ALLOWED" if self.allowed else "DENIED"
        head = (
            f"{self.endpoint} {self.direction.name} peer={self.peer_identity}"
            f" proto={self.proto} port={self.port}: {verdict}"
        )
        if not self.enforcing:
            return [head, "  not isolated in this direction (no policy enforces it)"]
        out = [head, f"  enforced by: {', '.join(self.enforcing)}"]
        out += [f"  allowed by {ref}" for ref in self.allowed_by] or ["  no rule matches"]
        return out


def explain(
    policies: Iterable[PolicyRef],
    endpoint: LocalEndpoint,
    identities: Mapping[int, Iterable[str]],
    pods: Iterable[ClusterPod],
    cidr_ids: Mapping[str, int],
    *,
    direction: Direction,
    peer_identity: int,
    proto: int,
    port: int,
) -> Explanation:
    """Which policies select ``endpoint`` and which of their rules allow the flow.

    ``cidr_ids`` is the allocator's current assignment (``CidrAllocator.assignments``), so CIDR
    identities mean what they mean in the realised maps."""
    issues: list[PolicyIssue] = []
    policy_list = unique_policies(policies, issues)
    own = ClusterPod(
        endpoint.namespace, endpoint.name, endpoint.identity, endpoint.ips, endpoint.ports
    )
    pod_list = [*pods, own]
    ctx = Context(identities, pod_list, cidr_ids, issues)
    selecting = selecting_policies(policy_list, endpoint)
    ptype = "Ingress" if direction is Direction.INGRESS else "Egress"
    enforcing = tuple(p.ref for p in selecting if ptype in p.spec.policy_types)
    _, rules = endpoint_rules(ctx, selecting, endpoint)
    eid = endpoint.endpoint_id
    matched = [
        origin
        for rule in rules
        for entry, origin in rule.origins
        if policy_allows({PolicyKey(eid, *entry)}, eid, direction, peer_identity, proto, port)
    ]
    allowed_by = sorted(set(matched), key=str)
    return Explanation(
        endpoint=endpoint.ref,
        direction=direction,
        peer_identity=peer_identity,
        proto=proto,
        port=port,
        selected_by=tuple(p.ref for p in selecting),
        enforcing=enforcing,
        allowed=not enforcing or bool(matched),
        allowed_by=tuple(allowed_by),
    )
