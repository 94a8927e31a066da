"""The real `weir apiserver` process, driven by the real kubectl binary.

One server process serves the whole module (starting it costs ~1 s): manifests loaded at start,
kubeconfig written for port 0, then kubectl get/create/replace/apply/label/delete against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
WEIR = str(VENV_BIN / "weir")
KUBECTL = str(VENV_BIN / "kubectl")

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: cart, namespace: shop}
  spec:
    ports: [{port: 80}]
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


class Server:
    def __init__(self, proc: subprocess.Popen[str], kubeconfig: Path, first_line: str) -> None:
        self.proc, self.kubeconfig, self.first_line = proc, kubeconfig, first_line

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {res.stderr}")
        return res


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("weir-apiserver")
    (tmp / "manifests").mkdir()
    (tmp / "manifests" / "shop.yaml").write_text(MANIFEST)
    kubeconfig = tmp / "kubeconfig"
    env = {**os.environ, "WEIR_SERVICE_CIDR": "10.50.0.0/24"}
    proc = subprocess.Popen(
        [
            *(WEIR, "apiserver", "--listen", "127.0.0.1:0"),
            *("--kubeconfig-out", str(kubeconfig), "--manifests", str(tmp / "manifests")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        deadline = time.monotonic() + 15
        while not kubeconfig.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"apiserver did not start: {first}{proc.stdout.read()}")
            time.sleep(0.05)
        yield Server(proc, kubeconfig, first)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_start_message_and_kubeconfig(server: Server) -> None:
    assert server.first_line.startswith("weir apiserver listening on http://127.0.0.1:")
    url = server.first_line.split()[-1]
    cfg = server.kubectl("config", "view", "-o", "json")
    doc = json.loads(cfg.stdout)
    assert doc["current-context"] == "weir-sandbox"
    assert doc["clusters"][0]["cluster"]["server"] == url


def test_manifests_loaded_at_start(server: Server) -> None:
    out = server.kubectl("get", "svc", "-n", "shop", "cart", "-o", "json")
    svc = json.loads(out.stdout)
    assert svc["spec"]["clusterIP"] == "10.50.0.2"  # from WEIR_SERVICE_CIDR
    assert "node-a" in server.kubectl("get", "nodes").stdout


def test_kubectl_create_get_replace_apply_label_delete(server: Server, tmp_path: Path) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(SERVICE)
    assert "service/web created" in server.kubectl("create", "-f", str(f)).stdout
    dup = server.kubectl("create", "-f", str(f), check=False)
    assert dup.returncode != 0 and "AlreadyExists" in dup.stderr

    table = server.kubectl("get", "svc").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"]
    assert table[1].split()[:4] == ["web", "ClusterIP", "10.50.0.3", "80/TCP"]

    f.write_text(SERVICE.replace("port: 80,", "port: 81,"))
    assert "replaced" in server.kubectl("replace", "-f", str(f)).stdout
    assert "labeled" in server.kubectl("label", "svc", "web", "tier=fe").stdout
    f.write_text(SERVICE.replace("port: 80,", "port: 82,"))
    assert "configured" in server.kubectl("apply", "-f", str(f)).stdout
    svc = json.loads(server.kubectl("get", "svc", "web", "-o", "json").stdout)
    assert svc["spec"]["ports"][0]["port"] == 82
    assert svc["metadata"]["labels"] == {"app": "web", "tier": "fe"}
    assert svc["spec"]["clusterIP"] == "10.50.0.3"

    all_ns = server.kubectl("get", "svc", "-A", "-o", "name").stdout.split()
    assert sorted(all_ns) == ["service/cart", "service/web"]
    assert "deleted" in server.kubectl("delete", "-f", str(f)).stdout
    missing = server.kubectl("get", "svc", "web", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_kubectl_invalid_object_names_the_field(server: Server, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(SERVICE.replace("port: 80,", "port: 70000,"))
    res = server.kubectl("create", "-f", str(f), check=False)
    assert res.returncode != 0
    assert 'The Service "web" is invalid: spec.ports[0].port: 70000' in res.stderr


def test_kubectl_apply_creates_in_other_kinds(server: Server, tmp_path: Path) -> None:
    f = tmp_path / "np.yaml"
    f.write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n"
    )
    assert "created" in server.kubectl("apply", "-f", str(f)).stdout
    assert "deny" in server.kubectl("get", "netpol", "-n", "shop").stdout
    assert "deleted" in server.kubectl("delete", "namespace", "shop").stdout
    assert server.kubectl("get", "netpol", "-A", "-o", "name").stdout.strip() == ""


def test_bad_flag_is_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [WEIR, "apiserver", "--listen", "127.0.0.1:0", "--service-cidr", "10.0.0.1/8"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert "--service-cidr" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    res = subprocess.run(
        [WEIR, "apiserver", "--listen", "127.0.0.1:0", "--manifests", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert "bad.yaml#0" in res.stderr and "Deployment" in res.stderr
