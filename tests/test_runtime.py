"""The study runtime: a broken algorithm fails only its own study, visibly and durably; a
restarted server answers at once while studies are rebuilt off the event loop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import wait_for
from hpod.client.local import LocalCluster
from hpod.v1 import hpod_pb2 as pb

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server and workers started by the test import the test samplers."""
    monkeypatch.setenv("HPOD_PLUGINS", "hpod_test_samplers")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [PLUGINS, *filter(None, [os.environ.get("PYTHONPATH")])]))


def analytic(seed: int, sampler: str = "random", max_resource: int = 9) -> dict:
    return {"trainer": "analytic", "seed": seed,
            "resource": {"max_resource": max_resource, "eta": 3},
            "algorithm": {"name": "hyperband", "settings": {"sampler": sampler}}}


def summary(study) -> tuple:
    return tuple(sorted((t.id, t.state, tuple(map(tuple, t.curve))) for t in study.trials()))


@pytest.mark.slow
def test_a_raising_sampler_fails_only_its_study_and_the_failure_survives_a_restart(
        tmp_path, plugin_env) -> None:
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=30.0) as cluster, cluster.client() as client:
        broken = client.create_study(analytic(seed=1, sampler="raise-third"))
        others = [client.create_study(analytic(seed=s)) for s in (2, 3, 4)]
        info = broken.wait(timeout=120)
        assert info.state == pb.STUDY_STATE_FAILED
        assert "hyperband" in info.error
        assert "RuntimeError" in info.error
        assert "exploded on its third suggestion" in info.error
        assert "'ask'" in info.error  # the input that raised
        # The ask that raised left nothing behind: no third trial, nothing running.
        assert len(broken.trials()) <= 2
        assert all(t.state != "running" for t in broken.trials())
        for study in others:
            assert study.wait(timeout=180).state == pb.STUDY_STATE_COMPLETED
        before = {s.id: summary(s) for s in others}

        cluster.server.send_signal(signal.SIGKILL)
        cluster.server.wait()
        cluster.start_server()
        wait_for(lambda: _answers(client, broken.id), timeout=120, what="the restarted server")
        again = broken.refresh()
        assert again.state == pb.STUDY_STATE_FAILED
        assert again.error == info.error
        for study in others:
            assert study.refresh().state == pb.STUDY_STATE_COMPLETED
            assert summary(study) == before[study.id]


def _answers(client, sid: str) -> bool:
    try:
        client.stub.GetStudy(pb.GetStudyRequest(study_id=sid), timeout=5)
        return True
    except grpc.RpcError:
        return False


def _ask_tell_round(study) -> dict | None:
    job = study.ask(wait=False)
    if job is None:
        return None
    value = sum(float(v) for v in job.config.values() if isinstance(v, (int, float)))
    job.complete(value + job.to_resource / 100.0)
    return {"trial": job.trial_id, "config": job.config, "to": job.to_resource}


@pytest.mark.slow
def test_restarted_server_answers_while_a_slow_study_is_rebuilt_then_continues_exactly(
        tmp_path, plugin_env) -> None:
    spec = {"seed": 7, "resource": {"max_resource": 27, "eta": 3},
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0},
                             "n": {"type": "int", "low": 1, "high": 8}},
            "algorithm": {"name": "asha", "settings": {"sampler": "slow-random"}},
            "max_trials": 60}
    with LocalCluster(workers=0, trainers=(), workdir=str(tmp_path),
                      lease_seconds=60.0) as cluster, cluster.client() as client:
        slow = client.create_study(spec)
        twin = client.create_study(spec)
        quick = client.create_study({**spec, "algorithm": {"name": "asha"}})
        for _ in range(24):  # ~6 s of suggestions to replay for each slow study
            assert _ask_tell_round(slow) is not None
            assert _ask_tell_round(twin) is not None

        cluster.server.send_signal(signal.SIGKILL)
        cluster.server.wait()
        cluster.start_server()
        channel = grpc.insecure_channel(cluster.address)
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(lambda: _serving(health), timeout=60, what="health SERVING")
        # The port is bound and reads are answered while the slow studies replay.
        listed = client.stub.ListStudies(pb.ListStudiesRequest(), timeout=10)
        assert {s.id for s in listed.studies} <= {slow.id, twin.id, quick.id}
        with pytest.raises(grpc.RpcError) as e:
            client.stub.GetStudy(pb.GetStudyRequest(study_id=slow.id), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "rebuilt" in e.value.details()
        wait_for(lambda: _answers(client, slow.id) and _answers(client, twin.id), timeout=120,
                 what="the slow studies rebuilt")
        listed = client.stub.ListStudies(pb.ListStudiesRequest(), timeout=10)
        assert {s.id for s in listed.studies} == {slow.id, twin.id, quick.id}
        # Continues exactly: the study that was replayed and its twin propose the same.
        for _ in range(6):
            a, b = _ask_tell_round(slow), _ask_tell_round(twin)
            assert a == b and a is not None
        channel.close()


def _serving(health) -> bool:
    try:
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_unknown_plugin_module_stops_the_server_with_the_reason(monkeypatch) -> None:
    from hpod.server import plugins

    monkeypatch.setenv("HPOD_PLUGINS", "no_such_module_for_hpod")
    with pytest.raises(SystemExit, match="no_such_module_for_hpod"):
        plugins.load_plugins()


@pytest.mark.slow
def test_an_ended_study_keeps_only_its_best_trials_checkpoints_and_reports_its_disk(
        tmp_path) -> None:
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=30.0) as cluster, cluster.client() as client:
        study = client.create_study(analytic(seed=5))
        assert study.wait(timeout=180).state == pb.STUDY_STATE_COMPLETED
        folder = cluster.workdir / "checkpoints" / study.id

        def on_disk() -> dict[int, int]:
            try:
                return {int(p.name): sum(f.stat().st_size for f in p.iterdir())
                        for p in folder.iterdir() if p.is_dir() and any(p.iterdir())}
            except FileNotFoundError:  # pruned while counted: count again
                return on_disk()

        wait_for(lambda: len(on_disk()) <= 3, timeout=60, what="checkpoints pruned")
        best = sorted((t.value, t.id) for t in study.trials() if t.value is not None)[:3]
        assert set(on_disk()) == {tid for _, tid in best}
        wait_for(lambda: study.refresh().checkpoint_bytes == sum(on_disk().values()),
                 timeout=60, what="the study's disk use reported")
        assert study.info.checkpoint_bytes > 0
        kept = {t.id: t.checkpoint_bytes for t in study.trials() if t.checkpoint_bytes}
        assert kept == on_disk()


def test_a_snapshot_that_does_not_load_is_quarantined_with_the_reason() -> None:
    """A stored snapshot the engine cannot read (an older algorithm's state, say) is kept
    read-only with why, instead of blocking the study's rebuild for good."""
    from hpod.server.algorithms import Resource, SearchSpace
    from hpod.server.algorithms.space import Float
    from hpod.server.manager import _rebuild
    from hpod.server.study import StudyConfig

    config = StudyConfig(SearchSpace((Float("x", 0.0, 1.0),)), Resource(9, 1, 3), "hyperband")
    engine, problem = _rebuild("s1", config, {"inputs": 3, "state": {"version": 999}}, [])
    assert problem.startswith("its stored snapshot does not load")
    _, fine = _rebuild("s1", config, None, [{"op": "ask", "free": 2}])
    assert fine == ""
