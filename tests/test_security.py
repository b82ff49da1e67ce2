"""A real server with TLS, hashed tokens, tenants and limits.

Tenant isolation is checked for every method of the ``Hpod`` service, enumerated from the
descriptor: a new RPC that takes a study, trial or job id and skips the ownership check fails
``test_every_rpc_hides_other_tenants_studies``.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from hpod.client import Client, HpodError
from hpod.client.local import LocalCluster
from hpod.server.service.auth import hash_token
from hpod.server.store.embedded import free_port
from hpod.v1 import hpod_pb2 as pb

pytest.importorskip("cryptography")
from tls_certs import make_certs  # noqa: E402 (needs cryptography)

TOKENS = {"a-user": ("team-a", "user"), "b-user": ("team-b", "user"),
          "a-worker": ("team-a", "worker"), "b-worker": ("team-b", "worker")}
SPEC = {"resource": {"max_resource": 9, "eta": 3}, "algorithm": {"name": "random"},
        "max_trials": 3, "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}
# Methods that take no study id; each is checked separately below.
NO_STUDY_ID = {"CreateStudy", "PlanStudy", "ListStudies"}
SERVICE = pb.DESCRIPTOR.services_by_name["Hpod"]


def write_tokens(path: Path) -> str:
    lines = ["# sha256(token) tenant role"]
    lines += [f"{hash_token(tok)} {tenant} {role}" for tok, (tenant, role) in TOKENS.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    work = tmp_path_factory.mktemp("secure")
    certs = make_certs(work / "certs")
    args = ("--tls-cert", certs["server_cert"], "--tls-key", certs["server_key"],
            "--tokens-file", write_tokens(work / "tokens"),
            "--max-message-bytes", str(1 << 20), "--max-parameters", "8",
            "--max-trials-per-study", "500", "--max-watches", "2")
    with LocalCluster(workers=0, workdir=str(work), server_args=args,
                      client_options={"tls_ca": certs["ca"], "token": "a-user"}) as c:
        c.certs = certs
        yield c


def client(cluster: LocalCluster, token: str | None = "a-user", **kw) -> Client:
    return Client(cluster.address, timeout=10, tls_ca=cluster.certs["ca"], token=token, **kw)


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(HpodError) as err:
        fn()
    assert err.value.message, "every refusal carries a message"
    return err.value.code


# ---------------------------------------------------------------- TLS


def test_tls_handshake_works_and_plaintext_is_refused(secured) -> None:
    with client(secured) as c:
        assert isinstance(c.list_studies(), list)
    with Client(secured.address, timeout=3, token="a-user", tls=False) as plain:
        assert code_of(plain.list_studies) == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the server's CA fails the handshake too.
    with Client(secured.address, timeout=3, token="a-user", tls=True,
                tls_ca=secured.certs["client_cert"]) as wrong_ca:
        assert code_of(wrong_ca.list_studies) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(tmp_path) -> None:
    certs = make_certs(tmp_path / "certs")
    args = ("--tls-cert", certs["server_cert"], "--tls-key", certs["server_key"],
            "--tls-client-ca", certs["ca"])
    mtls = {"tls_ca": certs["ca"], "tls_cert": certs["client_cert"],
            "tls_key": certs["client_key"]}
    with LocalCluster(workers=0, workdir=str(tmp_path), server_args=args,
                      client_options=mtls) as cluster:
        with cluster.client() as c:
            assert c.plan(SPEC).max_trials == 3
        with Client(cluster.address, timeout=3, tls_ca=certs["ca"]) as no_cert:
            assert code_of(lambda: no_cert.plan(SPEC)) == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- tokens


@pytest.mark.parametrize("token", [None, "", "not-a-token", "a-user2"])
def test_missing_or_wrong_token_is_unauthenticated(secured, token) -> None:
    with client(secured, token=token) as c:
        assert code_of(c.list_studies) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: c.create_study(SPEC)) == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(secured) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with client(secured, token=None) as c:
        resp = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_worker_token_may_only_take_and_report_jobs(secured) -> None:
    with client(secured) as user, client(secured, token="a-worker") as worker:
        study = user.create_study(SPEC)
        assert code_of(lambda: worker.create_study(SPEC)) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(worker.list_studies) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: worker.study(study.id)) == grpc.StatusCode.PERMISSION_DENIED
        # ... but it can run the study's jobs through ask/tell.
        handle = type(study)(worker, study.id, study.info)
        job = handle.ask()
        assert job is not None
        job.report(1, 0.5)
        job.complete(0.4)
        study.stop()


# ---------------------------------------------------------------- tenants


def _request(method, ids: dict) -> object:
    cls = getattr(pb, method.input_type.name)
    fields = {f.name for f in method.input_type.fields}
    return cls(**{k: v for k, v in ids.items() if k in fields})


def _call(c: Client, method, request) -> None:
    rpc = getattr(c.stub, method.name)
    try:
        out = rpc(request, timeout=5)
        if method.server_streaming:
            next(iter(out))
    except grpc.RpcError as e:
        raise HpodError(e.code(), e.details() or "") from None


def test_every_rpc_hides_other_tenants_studies(secured) -> None:
    with client(secured) as a, client(secured, token="b-user") as b, \
            client(secured, token="b-worker") as bw:
        study = a.create_study(SPEC)
        job = study.ask()
        ids = {"study_id": study.id, "job_id": job.id, "trial_id": job.trial_id}
        checked = set()
        for method in SERVICE.methods:
            fields = {f.name for f in method.input_type.fields}
            if "study_id" not in fields:
                assert method.name in NO_STUDY_ID, (
                    f"{method.name} takes no study_id: add it to NO_STUDY_ID with its own "
                    "tenant test, or give it the ownership check")
                continue
            request = _request(method, ids)
            for other in (b, bw) if method.name in {"AskJob", "ReportProgress", "CompleteJob",
                                                   "FailJob"} else (b,):
                err = pytest.raises(HpodError, _call, other, method, request)
                assert err.value.code == grpc.StatusCode.NOT_FOUND, (method.name, err.value)
                # The same answer as for a study that does not exist: ids do not leak.
                assert study.id in err.value.message or "no study" in err.value.message
            checked.add(method.name)
        assert checked == {m.name for m in SERVICE.methods} - NO_STUDY_ID
        # Tenant B sees none of A's studies; A's study and job are untouched.
        assert study.id not in {s.id for s in b.list_studies()}
        assert study.id in {s.id for s in a.list_studies()}
        assert study.refresh().state == pb.STUDY_STATE_ACTIVE
        assert job.report(1, 0.3) is False
        job.complete(0.3)
        study.stop()


def test_not_found_message_is_the_same_for_foreign_and_missing_ids(secured) -> None:
    with client(secured) as a, client(secured, token="b-user") as b:
        sid = a.create_study(SPEC).id
        foreign = pytest.raises(HpodError, b.study, sid).value
        missing = pytest.raises(HpodError, b.study, "s0000000000").value
        assert foreign.code == missing.code == grpc.StatusCode.NOT_FOUND
        assert foreign.message.replace(sid, "ID") == missing.message.replace("s0000000000", "ID")
        a.study(sid).stop()


# ---------------------------------------------------------------- limits


def test_oversized_request_is_refused_and_the_server_keeps_serving(secured) -> None:
    with client(secured) as c:
        huge = {**SPEC, "name": "x" * (2 << 20)}
        assert code_of(lambda: c.create_study(huge)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        many = {**SPEC, "search_space": {f"p{i}": {"type": "float", "low": 0.0, "high": 1.0}
                                         for i in range(9)}}
        err = pytest.raises(HpodError, c.create_study, many).value
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "at most 8" in err.message
        big = {**SPEC, "max_trials": 501}
        err = pytest.raises(HpodError, c.create_study, big).value
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "at most 500" in err.message
        assert c.plan(SPEC).max_trials == 3  # still serving


def test_concurrent_watches_are_limited_per_tenant(secured) -> None:
    with client(secured) as a, client(secured, token="b-user") as b:
        study = a.create_study(SPEC)
        req = pb.WatchStudyRequest(study_id=study.id)
        open_streams = [a.stub.WatchStudy(req) for _ in range(2)]
        try:
            import time

            time.sleep(0.5)  # let both streams reach the server
            err = pytest.raises(grpc.RpcError, lambda: next(iter(a.stub.WatchStudy(req,
                                                                                  timeout=5))))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "watches" in err.value.details()
            # Another tenant has its own allowance.
            other = b.create_study(SPEC)
            s = b.stub.WatchStudy(pb.WatchStudyRequest(study_id=other.id), timeout=2)
            with pytest.raises(grpc.RpcError) as deadline:
                next(iter(s))
            assert deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            other.stop()
        finally:
            for s in open_streams:
                s.cancel()
        study.stop()


def test_redis_with_a_password(tmp_path) -> None:
    import redis
    from hpod.server.store.embedded import EmbeddedRedis

    with EmbeddedRedis(str(tmp_path / "redis"), requirepass="s3cret-pw") as store:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=store.port).ping()
        spec = {"trainer": "analytic", "resource": {"max_resource": 3, "eta": 3},
                "algorithm": {"name": "hyperband"}}
        with LocalCluster(workers=1, trainers=("analytic",), redis_url=store.url,
                          workdir=str(tmp_path), port=free_port()) as cluster, \
                cluster.client() as c:
            info = c.create_study(spec).wait(timeout=60)
            assert info.state == pb.STUDY_STATE_COMPLETED


def test_healthcheck_module_speaks_tls(secured) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HPOD_PORT": secured.address.rsplit(":", 1)[1],
           "HPOD_TLS_CERT": secured.certs["server_cert"], "HPOD_TLS_CA": secured.certs["ca"]}
    res = subprocess.run([sys.executable, "-m", "hpod.server.healthcheck"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "SERVING" in res.stdout, res.stderr
    env.pop("HPOD_TLS_CERT")  # plaintext against a TLS port: unhealthy, not a hang
    res = subprocess.run([sys.executable, "-m", "hpod.server.healthcheck"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
