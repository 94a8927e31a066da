"""Table tests of the security label set: filtering, derived labels, canonical form, caps."""

from __future__ import annotations

import pytest

from services.identity.labels import (
    LabelFilter,
    LabelPatternError,
    LabelSet,
    LabelSetError,
    security_labels,
)

NS = "k8s:io.kubernetes.pod.namespace=shop"
SA = "k8s:io.cilium.k8s.policy.serviceaccount=default"


def labels_of(pod_labels: dict[str, str], **kw: object) -> list[str]:
    args: dict[str, object] = {
        "pod": "web-1",
        "namespace": "shop",
        "pod_labels": pod_labels,
        "namespace_labels": {},
        "service_account": "default",
    }
    args.update(kw)
    return list(security_labels(**args).labels)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pod_labels", "expected"),
    [
        ({"app": "web"}, ["k8s:app=web", NS, SA]),
        ({"app": "web", "pod-template-hash": "7d9f"}, ["k8s:app=web", NS, SA]),
        ({"app": "db", "controller-revision-hash": "db-6c"}, ["k8s:app=db", NS, SA]),
        ({"app": "db", "statefulset.kubernetes.io/pod-name": "db-0"}, ["k8s:app=db", NS, SA]),
        ({"apps.kubernetes.io/pod-index": "3"}, [NS, SA]),
        ({"job-name": "backup-28"}, [NS, SA]),
        ({"controller-uid": "a1b2"}, [NS, SA]),
        (
            {"batch.kubernetes.io/job-name": "x", "batch.kubernetes.io/controller-uid": "y"},
            [NS, SA],
        ),
        ({"pod-template-generation": "4"}, [NS, SA]),
        ({"app.kubernetes.io/name": "web"}, ["k8s:app.kubernetes.io/name=web", NS, SA]),
        ({"kubernetes.io/hostname": "n1"}, [NS, SA]),
        ({"topology.k8s.io/zone": "a"}, ["k8s:topology.k8s.io/zone=a", NS, SA]),
        ({"k8s.io/x": "a"}, [NS, SA]),
        ({"io.kubernetes.pod.name": "web-1"}, [NS, SA]),
        # a pod cannot claim another namespace by labelling itself
        ({"io.kubernetes.pod.namespace": "kube-system"}, [NS, SA]),
    ],
)
def test_default_filter(pod_labels: dict[str, str], expected: list[str]) -> None:
    assert labels_of(pod_labels) == sorted(expected)


def test_namespace_labels_and_service_account() -> None:
    got = labels_of(
        {"app": "web"},
        namespace_labels={"team": "a", "kubernetes.io/metadata.name": "shop"},
        service_account="web-sa",
    )
    assert got == [
        "k8s:app=web",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
        NS,
    ]


@pytest.mark.parametrize(
    ("patterns", "pod_labels", "expected"),
    [
        # user exclusion
        (["k8s:!env"], {"app": "web", "env": "prod"}, ["k8s:app=web", NS, SA]),
        # exclusion of another source does not apply
        (["container:!env"], {"env": "prod"}, ["k8s:env=prod", NS, SA]),
        # one inclusion: only included (+ built-in inclusions) remain; prefix-anchored
        (
            ["k8s:app"],
            {"app": "web", "app-tier": "fe", "env": "prod"},
            ["k8s:app-tier=fe", "k8s:app=web", NS, SA],
        ),
        # longer exclusion beats a shorter inclusion
        (["k8s:app", "!app-tier"], {"app": "web", "app-tier": "fe"}, ["k8s:app=web", NS, SA]),
        # inclusion longer than the built-in exclusion wins
        (
            [r"k8s:kubernetes\.io/hostname"],
            {"kubernetes.io/hostname": "n1", "x": "y"},
            ["k8s:kubernetes.io/hostname=n1", NS, SA],
        ),
    ],
)
def test_configured_patterns(
    patterns: list[str], pod_labels: dict[str, str], expected: list[str]
) -> None:
    got = labels_of(pod_labels, label_filter=LabelFilter.build(patterns))
    assert got == sorted(expected)


@pytest.mark.parametrize("bad", ["", "k8s:", "k8s:!", "!(", " app"])
def test_bad_pattern_is_a_clear_error(bad: str) -> None:
    with pytest.raises(LabelPatternError, match="label pattern"):
        LabelFilter.build([bad])


def test_canonical_form_and_hash_are_stable() -> None:
    a = security_labels(
        pod="a",
        namespace="shop",
        pod_labels={"b": "2", "a": "1"},
        namespace_labels=None,
        service_account="default",
    )
    b = security_labels(
        pod="b",
        namespace="shop",
        pod_labels={"a": "1", "b": "2", "pod-template-hash": "x"},
        namespace_labels={},
        service_account="default",
    )
    assert a == b and a.digest == b.digest
    assert a.canonical.startswith('["k8s:a=1","k8s:b=2",')
    assert LabelSet.from_canonical(a.canonical) == a
    assert len(a.digest) == 64
    c = security_labels(
        pod="c",
        namespace="other",
        pod_labels={"a": "1", "b": "2"},
        namespace_labels=None,
        service_account="default",
    )
    assert c.digest != a.digest


@pytest.mark.parametrize("text", ['{"a":1}', '["b","a"]', '["a","a"]', "[1]"])
def test_from_canonical_rejects_non_canonical(text: str) -> None:
    with pytest.raises(ValueError, match="canonical"):
        LabelSet.from_canonical(text)


def test_oversized_label_sets_are_rejected_naming_the_pod() -> None:
    many = {f"l{i}": "v" for i in range(64)}
    ns_many = {f"n{i}": "v" for i in range(64)}
    with pytest.raises(LabelSetError, match=r"pod shop/web-1: .* 130 labels, more than .* 100"):
        labels_of(many, namespace_labels=ns_many, max_labels=100)
    big = {f"k{i}": "v" * 63 for i in range(64)}
    with pytest.raises(LabelSetError, match=r"pod shop/web-1: .* bytes, more than .* 2048 bytes"):
        labels_of(big, max_bytes=2048)
    assert len(labels_of(many, namespace_labels=ns_many)) == 130  # default caps allow it
