"""Bus layout: stream names and subject builders, with reversible token escaping.

NATS subject tokens may not contain ``.``, ``*``, ``>`` or white space, yet pod, node and
EndpointSlice names may contain dots. Every name is therefore escaped into one token: bytes
outside ``[A-Za-z0-9-]`` become ``_xx`` (two lower-case hex digits of the UTF-8 byte). The
escape is a bijection on strings, so a subject can always be mapped back to the object.

Cluster-scoped objects (Namespace, Node) use the namespace token ``_cluster``. It cannot collide
with an escaped namespace name because an escaped ``_`` is always followed by two hex digits.
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "weir.v1"

STREAM_K8S: Final = "WEIR_K8S"
STREAM_IDENTITY: Final = "WEIR_IDENTITY"
STREAM_FLOWS: Final = "WEIR_FLOWS"
STREAM_ERRORS: Final = "WEIR_ERRORS"
STREAM_STATUS: Final = "WEIR_STATUS"

# Subject filters each stream captures (documented in contracts/asyncapi.yaml).
STREAM_SUBJECTS: Final[dict[str, tuple[str, ...]]] = {
    STREAM_K8S: (f"{PREFIX}.k8s.>",),
    STREAM_IDENTITY: (f"{PREFIX}.identity.>", f"{PREFIX}.ipcache.>"),
    STREAM_FLOWS: (f"{PREFIX}.flows.>",),
    STREAM_ERRORS: (f"{PREFIX}.errors.>",),
    STREAM_STATUS: (f"{PREFIX}.status.>",),
}

KV_IDENTITIES: Final = "WEIR_IDENTITIES"
KV_LEADER: Final = "WEIR_LEADER"

CLUSTER_SCOPE_TOKEN: Final = "_cluster"

K8S_KINDS: Final = ("service", "endpointslice", "pod", "namespace", "node", "networkpolicy")
CLUSTER_SCOPED_KINDS: Final = frozenset({"namespace", "node"})

_SAFE = re.compile(r"[A-Za-z0-9-]")
_ALL_SAFE = re.compile(r"[A-Za-z0-9-]+")  # most names: nothing to escape, one regex call
_ESCAPED = re.compile(r"_([0-9a-f]{2})")
_VALID_TOKEN = re.compile(r"^(?:[A-Za-z0-9-]|_[0-9a-f]{2})+$")


class SubjectError(ValueError):
    """A subject or token that does not follow the Weir bus layout."""


def escape_token(value: str) -> str:
    """Escape any string into a single valid NATS subject token (reversible)."""
    if value == "":
        raise SubjectError("cannot escape an empty string into a subject token")
    if _ALL_SAFE.fullmatch(value):
        return value
    out: list[str] = []
    for ch in value:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def unescape_token(token: str) -> str:
    """Invert :func:`escape_token`; raises SubjectError on a token it could not have produced."""
    if not _VALID_TOKEN.fullmatch(token):
        raise SubjectError(f"not an escaped subject token: {token!r}")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(token[i].encode("ascii"))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubjectError(f"escaped token is not UTF-8: {token!r}") from exc


def namespace_token(kind: str, namespace: str | None) -> str:
    if kind in CLUSTER_SCOPED_KINDS:
        return CLUSTER_SCOPE_TOKEN
    if not namespace:
        raise SubjectError(f"{kind} is namespaced but has no namespace")
    return escape_token(namespace)


def k8s_subject(kind: str, namespace: str | None, name: str) -> str:
    """``weir.v1.k8s.<kind>.<namespace>.<name>`` for one Kubernetes object."""
    if kind not in K8S_KINDS:
        raise SubjectError(f"unknown kind {kind!r}; expected one of {', '.join(K8S_KINDS)}")
    return f"{PREFIX}.k8s.{kind}.{namespace_token(kind, namespace)}.{escape_token(name)}"


def parse_k8s_subject(subject: str) -> tuple[str, str | None, str]:
    """Invert :func:`k8s_subject`: (kind, namespace or None when cluster-scoped, name)."""
    parts = subject.split(".")
    if len(parts) != 6 or ".".join(parts[:3]) != f"{PREFIX}.k8s" or parts[3] not in K8S_KINDS:
        raise SubjectError(f"not a weir k8s subject: {subject!r}")
    kind, ns_tok, name_tok = parts[3], parts[4], parts[5]
    namespace = None if ns_tok == CLUSTER_SCOPE_TOKEN else unescape_token(ns_tok)
    return kind, namespace, unescape_token(name_tok)


def k8s_filter(kind: str | None = None) -> str:
    """Subject filter for all objects of one kind (or all kinds)."""
    return f"{PREFIX}.k8s.{kind}.>" if kind else f"{PREFIX}.k8s.>"


def error_subject(kind: str, namespace: str | None, name: str) -> str:
    """``weir.v1.errors.<kind>.<namespace>.<name>``: objects that failed validation."""
    ns = CLUSTER_SCOPE_TOKEN if not namespace else escape_token(namespace)
    return f"{PREFIX}.errors.{escape_token(kind)}.{ns}.{escape_token(name or '-')}"


def identity_subject(identity: int) -> str:
    return f"{PREFIX}.identity.{identity}"


def ipcache_subject(ip: str) -> str:
    """``weir.v1.ipcache.<ip-token>``; IPv4 dots and IPv6 colons are escaped like names."""
    return f"{PREFIX}.ipcache.{escape_token(ip)}"


def flow_subject(node: str, verdict: str) -> str:
    return f"{PREFIX}.flows.{escape_token(node)}.{verdict}"


def status_subject(node: str) -> str:
    """``weir.v1.status.<node>``: what a datapath node has applied."""
    return f"{PREFIX}.status.{escape_token(node)}"
