"""NetworkPolicy peer selectors evaluated against identity label sets (pure).

Why this shape: on a node the datapath never sees peer *pods*, only numeric identities and their
label sets (``k8s:app=web``, ``k8s:io.kubernetes.pod.namespace=default``,
``k8s:io.cilium.k8s.namespace.labels.team=a`` ...), so a ``from``/``to`` peer is turned into the
set of identities whose labels it matches, the way Cilium's selector cache does. Each identity's
labels are parsed once into an :class:`IdentityView`; each peer is then a cheap predicate over it.

Semantics (Kubernetes, with Cilium's choices where Kubernetes leaves room):

* Only identities of pods (those carrying ``io.kubernetes.pod.namespace``) can be selected by a
  selector; reserved identities (host, world, ...) and CIDR identities never are.
* ``podSelector`` alone selects pods *in the policy's namespace*; ``namespaceSelector`` alone
  selects every pod of the matching namespaces; both in one peer are ANDed; ``{}`` matches all.
* ``podSelector`` is evaluated over all ``k8s:`` labels of the identity, so labels the identity
  allocator filters out (``pod-template-hash``, ``statefulset.kubernetes.io/pod-name``, ...)
  cannot be used to select *peers*, exactly as in Cilium.
* ``namespaceSelector`` is evaluated over the namespace labels carried as
  ``io.cilium.k8s.namespace.labels.<key>``. ``kubernetes.io/metadata.name`` (set by Kubernetes on
  every namespace) falls back to the namespace name when the identity does not carry it, so
  "target a namespace by its name" works even before namespace labels have propagated.

The label keys are repeated here rather than imported from ``services.identity.labels`` because
sibling services may not import each other (import-linter layers); both must stay in step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from contracts.v1.networkpolicy import PolicyPeer

SOURCE_K8S: Final = "k8s"
NAMESPACE_LABEL: Final = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX: Final = "io.cilium.k8s.namespace.labels."
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class IdentityView:
    """One identity's labels, split the way selectors need them."""

    id: int
    labels: dict[str, str]  # every k8s: label, key -> value (not to be mutated)
    namespace: str | None  # None: not a pod identity
    namespace_labels: dict[str, str]  # io.cilium.k8s.namespace.labels.* without the prefix


def parse_identity(identity: int, labels: Iterable[str]) -> tuple[IdentityView, list[str]]:
    """Build the view of one identity; returns it and the labels that could not be parsed
    (each as a message naming the label), which are skipped."""
    k8s: dict[str, str] = {}
    bad: list[str] = []
    for text in labels:
        source, colon, rest = text.partition(":")
        key, eq, value = rest.partition("=")
        if not colon or not eq or not key:
            bad.append(f"label {text!r} is not 'source:key=value'")
            continue
        if source == SOURCE_K8S:
            k8s[key] = value
    namespace = k8s.get(NAMESPACE_LABEL)
    ns_labels = {
        k[len(NAMESPACE_LABELS_PREFIX) :]: v
        for k, v in k8s.items()
        if k.startswith(NAMESPACE_LABELS_PREFIX)
    }
    if namespace is not None:
        ns_labels.setdefault(NAMESPACE_NAME_LABEL, namespace)
    return IdentityView(identity, k8s, namespace, ns_labels), bad


def peer_matches(peer: PolicyPeer, policy_namespace: str, view: IdentityView) -> bool:
    """Whether a selector peer of a policy in ``policy_namespace`` selects this identity.
    An ipBlock peer never selects an identity here (see ``policy_cidr``)."""
    if view.namespace is None or peer.ip_block is not None:
        return False
    if peer.namespace_selector is None:
        if view.namespace != policy_namespace:
            return False
    elif not peer.namespace_selector.matches(view.namespace_labels):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(view.labels)


def select_identities(
    peer: PolicyPeer, policy_namespace: str, views: Sequence[IdentityView]
) -> frozenset[int]:
    """All identities (of pods) a selector peer selects."""
    return frozenset(v.id for v in views if peer_matches(peer, policy_namespace, v))
