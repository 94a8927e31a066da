"""Load Kubernetes YAML manifests (Service + EndpointSlice) as contract events for tests.

Manifests in testdata stay plain Kubernetes YAML, readable and valid for kubectl; uid and
resourceVersion, which a real API server would add, are filled in here so ``to_event`` accepts
them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from contracts.v1 import K8sEvent, Op, to_event
from services.datapath.frontend import Frontend, FrontendSpec
from services.datapath.model import DesiredState

TESTDATA = Path(__file__).parent / "testdata"
KINDS = {"Service": "service", "EndpointSlice": "endpointslice"}
NODE = "node-a"


def events(path: Path, *, rv: str = "1", op: Op = Op.UPSERT) -> list[K8sEvent]:
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        raw: dict[str, Any] = dict(doc)
        meta = dict(raw["metadata"])
        meta.setdefault("uid", f"uid-{meta['namespace']}-{meta['name']}")
        meta.setdefault("resourceVersion", rv)
        raw["metadata"] = meta
        out.append(to_event(KINDS[raw["kind"]], op, raw, "test", datetime(2025, 1, 1, tzinfo=UTC)))
    return out


def desired(path: Path, node: str = NODE) -> dict[Frontend, FrontendSpec]:
    ds = DesiredState(node)
    for event in events(path):
        ds.apply(event)
    ds.flush()
    return dict(ds.frontends)


def manifests() -> list[Path]:
    return sorted(TESTDATA.glob("*.yaml"))
