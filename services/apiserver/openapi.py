"""A minimal OpenAPI v3 index, only so kubectl trusts the server to validate.

kubectl (``--validate=strict``, its default) downloads ``/openapi/v3`` and, if a kind's PATCH
operation lists the ``fieldValidation`` query parameter, leaves validation to the server instead
of validating client-side against full schemas. Publishing just those operations (no schemas)
makes ``kubectl create/replace/apply -f`` work without ``--validate=false``; kubectl's strategic
merge for ``apply`` then falls back to its compiled-in types, which cover every kind served here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from services.apiserver.resources import RESOURCES, Resource


def _gv_path(res: Resource) -> str:
    return f"apis/{res.group}/{res.version}" if res.group else f"api/{res.version}"


def _item_path(res: Resource) -> str:
    base = "/" + _gv_path(res)
    if res.namespaced:
        return f"{base}/namespaces/{{namespace}}/{res.plural}/{{name}}"
    return f"{base}/{res.plural}/{{name}}"


def group_version_doc(gv_path: str) -> dict[str, Any] | None:
    served = [r for r in RESOURCES if _gv_path(r) == gv_path]
    if not served:
        return None
    paths: dict[str, Any] = {}
    for res in served:
        gvk = {"group": res.group, "version": res.version, "kind": res.kind}
        paths[_item_path(res)] = {
            "patch": {
                "operationId": f"patch{res.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Weir API stand-in", "version": "v1"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _hash(doc: Any) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def root_index() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gv in dict.fromkeys(_gv_path(r) for r in RESOURCES):
        out[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={_hash(group_version_doc(gv))}"}
    return {"paths": out}
