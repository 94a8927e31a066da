"""Pre-loaded manifests are frozen out of the cyclic collector; later writes are not."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.apiserver.registry import SERVICES
from services.apiserver.server import ApiServerConfig, build_registry


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


def _service(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }


def _tracked(obj: object) -> bool:
    """Is ``obj`` in one of the collector's generations (frozen objects are in none)?"""
    return any(o is obj for o in gc.get_objects())


def test_loaded_state_is_frozen_and_new_writes_are_collected_as_usual(tmp_path: Path) -> None:
    manifest = tmp_path / "load.json"
    items = [_service(f"web-{i}") for i in range(20)]
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    registry = build_registry(ApiServerConfig(manifests=[manifest]))
    loaded = registry.store.get(SERVICES, "default", "web-3")
    assert gc.get_freeze_count() > 0
    assert not _tracked(loaded)
    later = registry.create(SERVICES, "default", _service("later"))
    assert _tracked(later)


def test_no_manifests_no_freeze() -> None:
    gc.unfreeze()
    build_registry(ApiServerConfig())
    assert gc.get_freeze_count() == 0
