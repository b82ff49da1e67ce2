"""The wire API: generated code is fresh, grpcurl-style tooling works, and a client written
only against the .proto files (generated in the test, not our SDK) runs ask/tell."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hpod.client.local import LocalCluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LocalCluster(workers=0, workdir=str(tmp_path_factory.mktemp("wire"))) as c:
        yield c


def test_generated_code_is_not_stale():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "hpod.v1.Hpod"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        resp = next(iter(refl.ServerReflectionInfo(iter([req]), timeout=10)))
        names = {s.name for s in resp.list_services_response.service}
        assert {"hpod.v1.Hpod", "grpc.health.v1.Health"} <= names


FRESH_CLIENT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import grpc
    import fresh_pb2 as pb, fresh_pb2_grpc as pbg
    assert "hpod" not in sys.modules
    stub = pbg.HpodStub(grpc.insecure_channel(sys.argv[2]))
    spec = pb.StudySpec(name="fresh", seed=3, max_trials=3,
        resource=pb.ResourceSpec(max_resource=4),
        algorithm=pb.AlgorithmSpec(name="random"),
        search_space=[pb.Parameter(name="x", float_range=pb.FloatRange(low=-1, high=1))])
    study = stub.CreateStudy(pb.CreateStudyRequest(spec=spec))
    done = 0
    while True:
        resp = stub.AskJob(pb.AskJobRequest(study_id=study.id, client_id="fresh"))
        if not resp.has_job:
            break
        job = resp.job
        x = job.config.fields["x"].number_value
        for step in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
            stub.ReportProgress(pb.ReportProgressRequest(
                study_id=study.id, job_id=job.job_id, resource=step, value=x * x + 1 / step))
        stub.CompleteJob(pb.CompleteJobRequest(study_id=study.id, job_id=job.job_id,
                                               value=x * x + 0.25, cost=0.1))
        done += 1
    best = stub.GetBestTrial(pb.GetBestTrialRequest(study_id=study.id))
    state = stub.GetStudy(pb.GetStudyRequest(study_id=study.id)).state
    print(json.dumps({"done": done, "best": best.id, "state": state,
                      "curve": len(best.curve)}))
''')


def test_client_generated_from_the_proto_files_runs_ask_tell(server, tmp_path):
    from grpc_tools import protoc

    shutil.copy(ROOT / "proto" / "hpod" / "v1" / "hpod.proto", tmp_path / "fresh.proto")
    include = Path(protoc.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"-I{include}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", str(tmp_path / "fresh.proto")]) == 0
    script = tmp_path / "client.py"
    script.write_text(FRESH_CLIENT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path), server.address],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"done": 3, "best": result["best"], "state": 2, "curve": 4}
