"""Deep validation through contracts.v1 (422 naming the field), --accept-invalid, bad requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiException

from services.apiserver.server import ApiServerConfig
from tests.apiserver.conftest import Kube, running_kube, status_of


def bad_svc(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 70000}]}}


async def test_contract_violation_is_422_with_the_field(kube: Kube) -> None:
    with pytest.raises(ApiException) as exc:
        await kube.core.create_namespaced_service("default", bad_svc("web"))
    assert exc.value.status == 422
    body = status_of(exc.value)
    assert body["reason"] == "Invalid"
    assert body["details"]["name"] == "web" and body["details"]["kind"] == "Service"
    assert body["details"]["causes"][0]["field"] == "spec.ports[0].port"
    assert "70000" in body["message"]
    # nothing was stored and the ClusterIP went back to the pool
    assert (await kube.core.list_namespaced_service("default")).items == []
    ok = await kube.core.create_namespaced_service(
        "default", {"metadata": {"name": "ok"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert ok.spec.cluster_ip == "10.96.0.2"


async def test_pod_status_is_validated(kube: Kube) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    await kube.core.create_namespaced_pod("default", pod)
    bad = {"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "not-an-ip"}}
    with pytest.raises(ApiException) as exc:
        await kube.core.replace_namespaced_pod_status("p", "default", bad)
    assert exc.value.status == 422
    assert status_of(exc.value)["details"]["causes"][0]["field"] == "status.podIP"


async def test_accept_invalid_stores_malformed_objects(tmp_path: Path) -> None:
    cfg = ApiServerConfig(port=0, kubeconfig_out=tmp_path / "kc", accept_invalid=True)
    async with running_kube(cfg) as k:
        created = await k.core.create_namespaced_service("default", bad_svc("web"))
        assert created.spec.ports[0].port == 70000
        # name rules still apply: the real API would never store such a name
        with pytest.raises(ApiException) as exc:
            await k.core.create_namespaced_service("default", bad_svc("Web"))
        assert exc.value.status == 422


async def test_explicit_and_headless_cluster_ips(kube: Kube) -> None:
    def svc(name: str, ip: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}

    fixed = await kube.core.create_namespaced_service("default", svc("fixed", "10.96.0.2"))
    assert fixed.spec.cluster_ip == "10.96.0.2"
    auto = await kube.core.create_namespaced_service("default", svc("auto", ""))
    assert auto.spec.cluster_ip == "10.96.0.3"
    headless = await kube.core.create_namespaced_service("default", svc("hl", "None"))
    assert headless.spec.cluster_ip == "None" and headless.spec.cluster_ips == ["None"]
    ext = await kube.core.create_namespaced_service(
        "default",
        {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "a.b"}},
    )
    assert ext.spec.cluster_ip is None
    for ip, text in (("10.96.0.3", "already allocated"), ("192.168.0.1", "valid range")):
        with pytest.raises(ApiException) as exc:
            await kube.core.create_namespaced_service("default", svc("dup", ip))
        assert exc.value.status == 422
        cause = status_of(exc.value)["details"]["causes"][0]
        assert cause["field"] == "spec.clusterIPs" and text in cause["message"]
    # changing a ClusterIP is refused; deleting frees it
    body = kube.api.sanitize_for_serialization(auto)
    body["spec"]["clusterIP"] = "10.96.0.9"
    body["spec"]["clusterIPs"] = ["10.96.0.9"]
    with pytest.raises(ApiException) as exc:
        await kube.core.replace_namespaced_service("auto", "default", body)
    assert exc.value.status == 422
    await kube.core.delete_namespaced_service("fixed", "default")
    again = await kube.core.create_namespaced_service("default", svc("again", "10.96.0.2"))
    assert again.spec.cluster_ip == "10.96.0.2"


async def test_raw_http_errors(kube: Kube) -> None:
    url = kube.server.url
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/v1/namespaces/default/pods",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
            assert (await r.json())["reason"] == "BadRequest"
        async with http.put(
            f"{url}/api/v1/namespaces/default/pods/a",
            json={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"}},
        ) as r:
            assert r.status == 400
            assert "does not match the name on the URL" in (await r.json())["message"]
        async with http.post(f"{url}/api/v1/pods", json={"metadata": {"name": "a"}}) as r:
            assert r.status == 405
            assert (await r.json())["reason"] == "MethodNotAllowed"
        async with http.post(
            f"{url}/api/v1/namespaces/default/services",
            json={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}},
        ) as r:
            assert r.status == 400
        async with http.get(f"{url}/api/v1/namespaces/default/widgets") as r:
            assert r.status == 404
        async with http.get(f"{url}/api/v1/pods?watch=1&resourceVersion=abc") as r:
            assert r.status == 400
        async with http.get(f"{url}/metrics") as r:
            text = await r.text()
            assert 'weir_apiserver_requests_total{code="405",resource="pods",verb="create"}' in text
            assert "weir_apiserver_watches_open 0.0" in text
        for probe in ("/healthz", "/readyz", "/livez", "/version", "/openapi/v3"):
            async with http.get(f"{url}{probe}") as r:
                assert r.status == 200, probe
