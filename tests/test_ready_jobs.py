"""Ask/tell jobs made ahead: a model-based study suggests its next job in the background, so
a client's AskJob does not wait on a model fit; the job survives a server restart without
being handed out twice; a lost ask/tell job is handed to the next client that asks."""

from __future__ import annotations

import signal

import grpc
import pytest
from helpers import wait_for
from hpod.client.local import LocalCluster
from hpod.server.algorithms import Resource, SearchSpace
from hpod.server.engine import QUEUED, RUNNING, StudyEngine
from hpod.server.study import StudyConfig
from hpod.v1 import hpod_pb2 as pb

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0},
         "y": {"type": "float", "low": 0.0, "high": 1.0}}


def tpe_spec(seed: int) -> dict:
    # TPE fits a model per suggestion: its asks run off the event loop, with a job ahead.
    return {"seed": seed, "search_space": SPACE, "resource": {"max_resource": 1},
            "algorithm": {"name": "random", "settings": {"sampler": "tpe"}},
            "max_trials": 40}


def states(study) -> dict[int, str]:
    return {t.id: t.state for t in study.trials(curves=False)}


def queued(study) -> list[int]:
    return [tid for tid, state in states(study).items() if state == QUEUED]


def test_engine_marks_jobs_asked_ahead_and_lost_retries_as_waiting_for_a_client() -> None:
    config = StudyConfig(SearchSpace.from_dict([{"name": "x", "type": "float", "low": 0,
                                                 "high": 1}]), Resource(1), "random", seed=3,
                         max_trials=5)
    eng = StudyEngine("s1", config)
    (ahead,) = eng.apply({"op": "ask", "free": 1, "external": True, "ready": True})
    assert ahead.state == QUEUED and eng.trials[ahead.trial_id].state == QUEUED
    assert [e.job.job_id for e in eng.take_effects() if e.kind == "ready"] == [ahead.job_id]
    eng.apply({"op": "start", "job_id": ahead.job_id})
    assert eng.trials[ahead.trial_id].state == RUNNING
    (direct,) = eng.apply({"op": "ask", "free": 1, "external": True, "client": "c"})
    assert direct.state == RUNNING
    eng.take_effects()
    eng.apply({"op": "lost", "job_id": direct.job_id})
    (retry,) = [e.job for e in eng.take_effects() if e.kind == "ready"]
    assert retry.trial_id == direct.trial_id and retry.attempt == 1 and retry.state == QUEUED


@pytest.mark.slow
def test_a_model_based_study_makes_its_next_job_ahead_and_keeps_it_across_a_restart(
        tmp_path) -> None:
    with LocalCluster(workers=0, trainers=(), workdir=str(tmp_path),
                      lease_seconds=120.0) as cluster, cluster.client() as client:
        study = client.create_study(tpe_spec(seed=5))
        first = study.ask(wait=False)
        # Without another ask, the next trial is suggested in the background and waits.
        wait_for(lambda: len(queued(study)) == 1, timeout=60, what="a job made ahead")
        (ahead,) = queued(study)
        first.complete(first.config["x"] + first.config["y"])
        second = study.ask(wait=False)
        assert second.trial_id == ahead
        wait_for(lambda: states(study)[ahead] == RUNNING, timeout=60, what="it runs")
        second.complete(second.config["x"])
        wait_for(lambda: len(queued(study)) == 1, timeout=60, what="the next one ahead")
        (ahead,) = queued(study)

        cluster.server.send_signal(signal.SIGKILL)
        cluster.server.wait()
        cluster.start_server()
        wait_for(lambda: _answers(client, study.id), timeout=120, what="the restarted server")
        # The job made ahead is still the next one, and is handed out once only.
        third = study.ask(wait=False)
        assert third.trial_id == ahead
        fourth = study.ask(wait=False)
        assert fourth.trial_id not in (first.trial_id, second.trial_id, ahead)
        third.complete(0.5)
        fourth.complete(0.25)
        assert states(study)[ahead] == "completed"


@pytest.mark.slow
def test_a_lost_ask_tell_job_goes_to_the_next_client(tmp_path) -> None:
    spec = {"seed": 1, "search_space": SPACE, "resource": {"max_resource": 9, "eta": 3},
            "algorithm": {"name": "hyperband"}}
    # A short lease on purpose: the job below is abandoned and must expire.
    with LocalCluster(workers=0, trainers=(), workdir=str(tmp_path),
                      lease_seconds=3.0) as cluster, cluster.client() as client:
        study = client.create_study(spec)
        abandoned = study.ask(wait=False)
        wait_for(lambda: next(t for t in study.trials(curves=False)
                              if t.id == abandoned.trial_id).lost_jobs == 1,
                 timeout=120, what="the abandoned job lost")
        jobs = []
        while (job := study.ask(wait=False)) is not None:
            jobs.append(job)
        assert abandoned.trial_id in [j.trial_id for j in jobs]
        retry = next(j for j in jobs if j.trial_id == abandoned.trial_id)
        assert retry.id != abandoned.id and retry.config == abandoned.config
        for job in jobs:
            job.complete(job.config["x"])


def _answers(client, sid: str) -> bool:
    try:
        client.stub.GetStudy(pb.GetStudyRequest(study_id=sid), timeout=5)
        return True
    except grpc.RpcError:
        return False
