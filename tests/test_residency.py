"""Ended studies leave server memory and answer every read exactly as before
(server/residency.py): a real Redis, the real manager and servicer, in process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from hpod.client.spec import build_spec
from hpod.server import tenancy
from hpod.server.manager import Settings, StudyManager
from hpod.server.residency import Residency, restable
from hpod.server.service.convert import config_from_spec
from hpod.server.service.servicer import HpodServicer
from hpod.v1 import hpod_pb2 as pb


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Context:
    """The one piece of gRPC a servicer method touches outside a real call: abort."""

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)


def spec() -> dict[str, Any]:
    return {"name": "resting", "objective": {"metric": "loss", "direction": "minimize"},
            "resource": {"name": "epoch", "max_resource": 9, "eta": 3},
            "algorithm": {"name": "idhb"}, "seed": 5,
            "search_space": {"x": {"type": "float", "low": -2.0, "high": 2.0},
                             "w": {"type": "int", "low": 1, "high": 64, "log": True}}}


def loss(config: dict, r: float) -> float:
    return round(config["x"] ** 2 + 1.0 / r + config["w"] / 640, 6)


async def drive(m: StudyManager, sid: str) -> str:
    """Ask/tell until the study hands out nothing; returns the last job id."""
    last = ""
    while asked := await m.submit(sid, {"op": "ask", "free": 1, "external": True}):
        job = asked[0]
        for r in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
            await m.submit(sid, {"op": "progress", "job_id": job.job_id, "resource": float(r),
                                 "value": loss(job.config, r)})
        await m.submit(sid, {"op": "complete", "job_id": job.job_id,
                             "value": loss(job.config, job.to_resource)})
        last = job.job_id
    return last


async def rest(m: StudyManager) -> None:
    """Put every ended study to rest now (what the reap loop does once they are unused),
    and wait for a pass the reap loop may have started meanwhile."""
    m.residency.keep_ended = 0
    try:
        for _ in range(600):
            await m._rest_due()
            if not any(restable(lv) for lv in m.studies.values()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("ended studies did not rest")
    finally:
        m.residency.keep_ended = 10**6


async def reads(svc: HpodServicer, sid: str, late_job: str) -> dict[str, Any]:
    """Every read a client makes of a study, and the answer to a late report."""
    ctx = Context()
    study = await svc.GetStudy(pb.GetStudyRequest(study_id=sid), ctx)
    listed = await svc.ListStudies(pb.ListStudiesRequest(), ctx)
    trials = await svc.ListTrials(pb.ListTrialsRequest(study_id=sid, include_curves=True), ctx)
    best = await svc.GetBestTrial(pb.GetBestTrialRequest(study_id=sid), ctx)
    one = await svc.GetTrial(pb.GetTrialRequest(study_id=sid, trial_id=3), ctx)
    with pytest.raises(Aborted) as late:
        await svc.CompleteJob(pb.CompleteJobRequest(study_id=sid, job_id=late_job, value=1.0),
                              ctx)
    return {"study": study, "listed": list(listed.studies), "trials": list(trials.trials),
            "best": best, "one": one, "late": (late.value.code, str(late.value))}


def gauge(m: StudyManager, name: str = "hpod_studies") -> dict[str, float]:
    """What Prometheus would read as ``name`` (hpod_studies or hpod_trials) now, by state."""
    from hpod.server.metrics import StudyCollector

    family = next(f for f in StudyCollector(m).collect() if f.name == name)
    return {sample.labels["state"]: sample.value for sample in family.samples}


@contextlib.asynccontextmanager
async def manager(url: str) -> AsyncIterator[StudyManager]:
    # Ended studies rest only when the test says so (rest() below): no clock is involved.
    m = StudyManager(Settings(redis_url=url, rest_after_seconds=1e9, ended_in_memory=10**6,
                              fit_processes=0))
    await m.start()
    await m.ready()
    try:
        yield m
    finally:
        await m.stop()


def test_an_ended_study_rests_out_of_memory_and_reads_answer_as_before(redis_server) -> None:
    async def go() -> None:
        async with manager(redis_server.url) as m:
            svc = HpodServicer(m)
            sid = (await m.create(config_from_spec(build_spec(spec())))).engine.study_id
            late_job = await drive(m, sid)
            assert m.studies[sid].engine.state == "completed"
            before = await reads(svc, sid, late_job)
            assert before["late"][0] == grpc.StatusCode.FAILED_PRECONDITION
            trials = gauge(m, "hpod_trials")
            assert sum(trials.values()) == len(before["trials"]) > 0

            await rest(m)
            assert sid not in m.studies and sid in m.residency.resting
            # Still counted, out of memory, and its trials with it.
            assert gauge(m) == {"completed": 1.0}
            assert gauge(m, "hpod_trials") == trials
            listed = await svc.ListStudies(pb.ListStudiesRequest(), Context())
            assert list(listed.studies) == before["listed"]
            assert sid not in m.studies  # listed without loading it
            assert await reads(svc, sid, late_job) == before  # each read loaded it first
            assert sid in m.studies and sid not in m.residency.resting
            await rest(m)
            assert sid not in m.studies

        # A restarted server takes the resting study back without rebuilding it.
        async with manager(redis_server.url) as m:
            svc = HpodServicer(m)
            assert sid not in m.studies and sid in m.residency.resting
            assert gauge(m) == {"completed": 1.0}
            assert gauge(m, "hpod_trials") == trials
            assert await reads(svc, sid, late_job) == before

            # A write to a resting study loads it too: ID-HB raised, and work is handed out.
            await rest(m)
            assert sid not in m.studies
            raised = await svc.RaiseMaxResource(pb.RaiseMaxResourceRequest(study_id=sid),
                                                Context())
            assert raised.spec.resource.max_resource == 27.0
            assert m.studies[sid].engine.state == "active"
            await rest(m)
            assert sid in m.studies  # an active study never rests
            await drive(m, sid)

    asyncio.run(go())


def test_a_study_that_changed_after_resting_is_rebuilt_at_restart(redis_server) -> None:
    async def go() -> None:
        async with manager(redis_server.url) as m:
            sid = (await m.create(config_from_spec(build_spec(spec())))).engine.study_id
            await drive(m, sid)
            await rest(m)
            await m.submit(sid, {"op": "raise_max_resource"})  # its listing is out of date now

        async with manager(redis_server.url) as m:
            assert sid in m.studies and sid not in m.residency.resting
            assert m.studies[sid].engine.state == "active"
            assert m.studies[sid].engine.max_resource() == 27.0

    asyncio.run(go())


def _live(ended: bool) -> Any:
    eng = SimpleNamespace(state="completed" if ended else "active", jobs={}, inputs=10)
    return SimpleNamespace(engine=eng, stale=False, busy=False, watchers=set(), log_len=0,
                           snapshot_at=10, fence="f", lock=asyncio.Lock())


def test_rest_picks_the_idle_and_the_least_recently_used_beyond_the_limit() -> None:
    res = Residency(rest_after=60.0, keep_ended=2)
    studies = {"a": _live(True), "b": _live(True), "c": _live(True), "d": _live(False)}
    assert res.due(studies, now=0.0) == ["a"]  # four ended at most two: the oldest first
    res.touch("a")
    res.used["a"] = 30.0  # read at t = 30: now the most recently used
    assert res.due(studies, now=40.0) == ["b"]
    assert res.due(studies, now=61.0) == ["b", "c"]  # idle for 60 s
    assert res.due(studies, now=95.0) == ["b", "c", "a"]
    studies["a"].watchers.add(object())  # someone watches it: it stays
    assert res.due(studies, now=95.0) == ["b", "c"]


def test_a_resting_study_is_hidden_from_other_tenants_and_can_be_deleted(redis_server) -> None:
    async def go() -> None:
        async with manager(redis_server.url) as m:
            svc = HpodServicer(m)
            sid = (await m.create(config_from_spec(build_spec(spec())))).engine.study_id
            await drive(m, sid)
            await rest(m)
            assert sid in m.residency.resting
            token = tenancy.caller.set("someone-else")
            try:
                listed = await svc.ListStudies(pb.ListStudiesRequest(), Context())
                assert sid not in [s.id for s in listed.studies]
                with pytest.raises(Aborted) as e:
                    await svc.GetStudy(pb.GetStudyRequest(study_id=sid), Context())
                assert e.value.code == grpc.StatusCode.NOT_FOUND
                assert sid in m.residency.resting  # a stranger's call loads nothing
            finally:
                tenancy.caller.reset(token)
            await svc.DeleteStudy(pb.DeleteStudyRequest(study_id=sid), Context())
            assert sid not in m.studies and sid not in m.residency.resting
            with pytest.raises(Aborted) as e:
                await svc.GetStudy(pb.GetStudyRequest(study_id=sid), Context())
            assert e.value.code == grpc.StatusCode.NOT_FOUND

    asyncio.run(go())
