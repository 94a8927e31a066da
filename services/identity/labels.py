"""The security-relevant label set of a pod: filtering, canonical form and hash (pure).

Why this shape: an identity is only as stable as its label set. Labels that change on every
rollout (``pod-template-hash``), per replica (``statefulset.kubernetes.io/pod-name``) or per job
run (``controller-uid``) would give every pod its own identity, so they are filtered out before
hashing, exactly like Cilium's ``--label`` filter (``pkg/labelsfilter``):

- A pattern is ``[source:][!]regex``; ``!`` makes it an exclusion, a missing source (or ``any``)
  matches every source. The regex is anchored at the start of the key only, so ``k8s:app``
  also matches ``app-tier`` (Cilium does the same).
- A label is kept when no exclusion matches it and no user inclusion is configured, or when the
  longest matching inclusion pattern is longer than the longest matching exclusion. Built-in
  inclusions (namespace, namespace labels, service account, ``app.kubernetes.io``) therefore win
  over the built-in ``!io.kubernetes`` exclusion; once a user adds any inclusion only included
  labels remain.

The derived labels (``io.kubernetes.pod.namespace``, ``io.cilium.k8s.namespace.labels.<k>``,
``io.cilium.k8s.policy.serviceaccount``) override pod labels with the same key, so a pod cannot
claim another namespace by labelling itself. The canonical form is the sorted list of
``source:key=value`` strings; its compact JSON encoding is what is stored and what is hashed
(sha256), so two allocators always agree on the key of a label set.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

SOURCE_K8S: Final = "k8s"
SOURCE_ANY: Final = "any"

NAMESPACE_LABEL: Final = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX: Final = "io.cilium.k8s.namespace.labels."
SERVICE_ACCOUNT_LABEL: Final = "io.cilium.k8s.policy.serviceaccount"

MAX_SECURITY_LABELS: Final = 160
MAX_CANONICAL_BYTES: Final = 16384

# Inclusions that are always present (they only decide ties against the exclusions below unless
# the user configures an inclusion of their own).
DEFAULT_INCLUDE: Final = (
    r"io\.kubernetes\.pod\.namespace",
    r"io\.cilium\.k8s\.namespace\.labels",
    r"io\.cilium\.k8s\.policy",
    r"app\.kubernetes\.io",
)
# Cilium's default exclusions plus the job labels (``job-name``, all of ``batch.kubernetes.io``)
# that Kubernetes sets per Job run.
DEFAULT_EXCLUDE: Final = (
    r"io\.kubernetes",
    r"kubernetes\.io",
    r"statefulset\.kubernetes\.io/pod-name",
    r"apps\.kubernetes\.io/pod-index",
    r"batch\.kubernetes\.io",
    r".*beta\.kubernetes\.io",
    r"k8s\.io",
    r"pod-template-generation",
    r"pod-template-hash",
    r"controller-revision-hash",
    r"annotation.*",
    r"controller-uid",
    r"job-name",
    r"etcd_node",
)


class LabelPatternError(ValueError):
    """A ``--label`` pattern that cannot be parsed."""


class LabelSetError(ValueError):
    """A pod whose security label set cannot be used; names the pod and the reason."""

    def __init__(self, pod: str, reason: str) -> None:
        self.pod = pod
        self.reason = reason
        super().__init__(f"pod {pod}: {reason}")


@dataclass(frozen=True)
class LabelPattern:
    """One filter pattern: matches labels of ``source`` whose key starts with ``regex``."""

    source: str
    regex: re.Pattern[str]
    exclude: bool
    text: str

    @classmethod
    def parse(cls, spec: str) -> LabelPattern:
        if not spec or spec.strip() != spec:
            raise LabelPatternError(f"label pattern {spec!r}: must be non-empty, no white space")
        source, sep, rest = spec.partition(":")
        if not sep or not re.fullmatch(r"[a-z0-9-]+", source):
            source, rest = SOURCE_ANY, spec
        exclude = rest.startswith("!")
        body = rest[1:] if exclude else rest
        if not body:
            raise LabelPatternError(f"label pattern {spec!r}: empty regular expression")
        try:
            regex = re.compile(body)
        except re.error as exc:
            msg = f"label pattern {spec!r}: bad regular expression: {exc}"
            raise LabelPatternError(msg) from exc
        return cls(source=source, regex=regex, exclude=exclude, text=body)

    def matches(self, source: str, key: str) -> bool:
        if self.source not in (SOURCE_ANY, source):
            return False
        return self.regex.match(key) is not None


@dataclass(frozen=True)
class LabelFilter:
    """Cilium-style include/exclude filter; see the module docstring for the decision rule."""

    patterns: tuple[LabelPattern, ...]
    user_inclusive: bool

    @classmethod
    def build(cls, user_patterns: Iterable[str] = ()) -> LabelFilter:
        user = tuple(LabelPattern.parse(p) for p in user_patterns)
        defaults = [LabelPattern.parse(p) for p in DEFAULT_INCLUDE]
        defaults += [LabelPattern.parse("!" + p) for p in DEFAULT_EXCLUDE]
        return cls(tuple(defaults) + user, any(not p.exclude for p in user))

    def keep(self, source: str, key: str) -> bool:
        included = ignored = 0
        for p in self.patterns:
            if p.matches(source, key):
                if p.exclude:
                    ignored = max(ignored, len(p.text))
                else:
                    included = max(included, len(p.text))
        if not self.user_inclusive and ignored == 0:
            return True
        return included > ignored


DEFAULT_FILTER: Final = LabelFilter.build()


@dataclass(frozen=True)
class LabelSet:
    """A canonical security label set: sorted ``source:key=value`` strings and their hash."""

    labels: tuple[str, ...]

    @classmethod
    def of(cls, labels: Iterable[str]) -> LabelSet:
        return cls(tuple(sorted(set(labels))))

    @property
    def canonical(self) -> str:
        return json.dumps(list(self.labels), separators=(",", ":"), ensure_ascii=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @classmethod
    def from_canonical(cls, text: str | bytes) -> LabelSet:
        """Parse a stored canonical form; raises ValueError when it is not one."""
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("canonical label set must be a JSON list of strings")
        result = cls.of(value)
        if list(result.labels) != value:
            raise ValueError("canonical label set must be sorted and free of duplicates")
        return result


def security_labels(
    *,
    pod: str,
    namespace: str,
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str] | None,
    service_account: str | None,
    label_filter: LabelFilter = DEFAULT_FILTER,
    max_labels: int = MAX_SECURITY_LABELS,
    max_bytes: int = MAX_CANONICAL_BYTES,
) -> LabelSet:
    """The security-relevant labels of pod ``namespace/pod``; raises LabelSetError if too large."""
    raw: dict[str, str] = dict(pod_labels)
    for key, value in (namespace_labels or {}).items():
        raw[NAMESPACE_LABELS_PREFIX + key] = value
    raw[NAMESPACE_LABEL] = namespace
    if service_account:
        raw[SERVICE_ACCOUNT_LABEL] = service_account
    kept = [f"{SOURCE_K8S}:{k}={v}" for k, v in raw.items() if label_filter.keep(SOURCE_K8S, k)]
    ref = f"{namespace}/{pod}"
    if len(kept) > max_labels:
        raise LabelSetError(
            ref, f"security label set has {len(kept)} labels, more than the limit of {max_labels}"
        )
    result = LabelSet.of(kept)
    size = len(result.canonical.encode())
    if size > max_bytes:
        raise LabelSetError(
            ref, f"security label set is {size} bytes, more than the limit of {max_bytes} bytes"
        )
    return result
