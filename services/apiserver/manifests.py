"""Loading manifests (YAML or JSON files, directories, multi-document streams, ``List`` kinds).

Pure parsing is separated from the registry call so a bad document is reported with its file and
position, and namespaces are created before the objects inside them regardless of file order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.apiserver.resources import lookup_kind
from services.apiserver.status import ApiError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Manifest:
    source: str  # "path#index"
    obj: dict[str, Any]


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix in MANIFEST_SUFFIXES and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise ManifestError(f"manifest path {p} does not exist")
    return out


def _flatten(doc: Any, source: str) -> list[Manifest]:
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ManifestError(f"{source}: a manifest must be an object, got {type(doc).__name__}")
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        out: list[Manifest] = []
        for i, item in enumerate(doc["items"]):
            out += _flatten(item, f"{source}.items[{i}]")
        return out
    return [Manifest(source, doc)]


def parse_text(text: str, source: str) -> list[Manifest]:
    try:
        if source.endswith(".json"):
            docs: list[Any] = [json.loads(text)]
        else:
            docs = list(yaml.safe_load_all(text))
    except (ValueError, yaml.YAMLError) as exc:
        raise ManifestError(f"{source}: cannot parse: {exc}") from None
    out: list[Manifest] = []
    for i, doc in enumerate(docs):
        out += _flatten(doc, f"{source}#{i}")
    return out


def read_manifests(paths: Iterable[str | Path]) -> list[Manifest]:
    out: list[Manifest] = []
    for f in _files(paths):
        out += parse_text(f.read_text(), str(f))
    # namespaces first, so objects can be created in them whatever the file order
    return sorted(out, key=lambda m: m.obj.get("kind") != "Namespace")


def load_into(registry: Any, manifests: list[Manifest]) -> int:
    """Create every manifest through the registry; returns the count, raises on the first error."""
    for m in manifests:
        res = lookup_kind(str(m.obj.get("apiVersion", "")), str(m.obj.get("kind", "")))
        if res is None:
            raise ManifestError(
                f"{m.source}: kind {m.obj.get('kind')!r} apiVersion {m.obj.get('apiVersion')!r} "
                "is not served by the weir apiserver"
            )
        ns = (m.obj.get("metadata") or {}).get("namespace") or "default"
        try:
            registry.create(res, ns if res.namespaced else None, m.obj)
        except ApiError as err:
            raise ManifestError(f"{m.source}: {err.message}") from None
    return len(manifests)
