"""Malformed objects are reported (log, metric, weir.v1.errors.*) and skipped; the rest flows.

The malformed objects are Kubernetes API round-trip-fixture style: placeholder strings in typed
fields, stored by a stand-in started with ``accept_invalid``, and served to the watcher exactly as
a real API server would serve a stored object.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from contracts.subjects import error_subject, k8s_subject
from contracts.v1 import ValidationReport
from tests.apiserver.conftest import Kube
from tests.watcher import kubeops
from tests.watcher.conftest import RunningWatcher, Tap
from tests.watcher.samples import placeholder_service, sample


def _invalid_count(kind: str, field: str) -> float:
    labels = {"kind": kind, "field": field}
    return REGISTRY.get_sample_value("weir_watcher_invalid_objects_total", labels) or 0.0


async def test_placeholder_objects_are_reported_and_skipped(
    kube: Kube, tap: Tap, watcher: RunningWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    before = _invalid_count("service", "spec.ports[*].port")
    pod = sample("pod", "bad-pod")
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = "placeholder"
    with caplog.at_level(logging.ERROR, logger="services.watcher"):
        await kubeops.create(kube, "service", placeholder_service("bad-svc"))
        await kubeops.create(kube, "pod", pod)
        await kubeops.create(kube, "service", sample("service", "good-svc"))

        report = await tap.wait_for(
            lambda m: m.subject == error_subject("service", "default", "bad-svc"), 1.0
        )
        rep = ValidationReport.model_validate(report.data)
        assert (rep.kind, rep.namespace, rep.name, rep.field) == (
            "service",
            "default",
            "bad-svc",
            "spec.ports[0].port",
        )
        assert "placeholder" in rep.message
        pod_report = await tap.wait_for(
            lambda m: m.subject == error_subject("pod", "default", "bad-pod"), 1.0
        )
        assert pod_report.data["field"] == "spec.containers[0].ports[0].containerPort"
        await tap.wait_for(
            lambda m: m.subject == k8s_subject("service", "default", "good-svc"), 1.0
        )
    assert _invalid_count("service", "spec.ports[*].port") == before + 1
    assert any(
        "default/bad-svc" in r.getMessage() and "spec.ports[0].port" in r.getMessage()
        for r in caplog.records
    )
    hidden = {
        k8s_subject("service", "default", "bad-svc"),
        k8s_subject("pod", "default", "bad-pod"),
    }
    assert tap.count(lambda m: m.subject in hidden) == 0
    assert not watcher.task.done()
    assert tap.schema_violations() == []


async def test_valid_object_turning_invalid_keeps_last_valid_state(
    kube: Kube, tap: Tap, watcher: RunningWatcher
) -> None:
    subject = k8s_subject("service", "default", "flip")
    errors = error_subject("service", "default", "flip")
    created = await kubeops.create(kube, "service", sample("service", "flip"))
    await tap.wait_for(lambda m: m.subject == subject, 1.0)

    await kubeops.replace(kube, "service", placeholder_service("flip"))
    await tap.wait_for(lambda m: m.subject == errors, 1.0)
    await asyncio.sleep(0.3)
    # the last valid state stays on the bus: no UPSERT of garbage, no DELETE
    assert [m.data["op"] for m in tap.messages if m.subject == subject] == ["UPSERT"]

    await kubeops.delete(kube, "service", created)
    gone = await tap.wait_for(lambda m: m.subject == subject and m.data["op"] == "DELETE", 1.0)
    assert gone.data["uid"] == created["metadata"]["uid"]
    assert gone.data["object"] is None  # the final state was invalid: a bare tombstone
    assert tap.count(lambda m: m.subject == errors) == 1
    assert tap.schema_violations() == []
