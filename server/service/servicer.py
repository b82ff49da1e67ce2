"""The gRPC servicer: translates messages to study-manager calls and errors to status codes.
Nothing else happens here."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from hpod.v1 import hpod_pb2 as pb
from hpod.v1 import hpod_pb2_grpc as pb_grpc
from redis.exceptions import ConnectionError as RedisConnectionError

from .. import metrics, tenancy
from ..algorithms import SettingsError, SpaceError
from ..engine import EngineError
from ..manager import StudyManager
from ..options import Limits
from ..study import StudyConfig
from . import convert

CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
         "precondition": grpc.StatusCode.FAILED_PRECONDITION,
         "unavailable": grpc.StatusCode.UNAVAILABLE,
         "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED}


def rpc(fn: Callable) -> Callable:
    """Map domain errors to status codes with the message a person can act on."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except (SettingsError, SpaceError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except EngineError as e:
            await context.abort(CODES[e.code], e.message)
        except RedisConnectionError:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the server cannot reach Redis right now; retry shortly")

    return wrapper


def _need(value: str, field: str) -> None:
    if not value:
        raise EngineError("invalid", f"{field} is required")


def _check_size(spec: pb.StudySpec, config: StudyConfig, limits: Limits) -> None:
    """Refuse a study larger than the server allows, before anything is stored."""
    if len(spec.search_space) > limits.max_parameters:
        raise EngineError("invalid", f"search_space has {len(spec.search_space)} parameters; "
                          f"this server allows at most {limits.max_parameters}")
    planned = config.build_algorithm().plan().max_trials
    if not planned or planned > limits.max_trials:
        raise EngineError("invalid", f"this study would create {planned or 'unboundedly many'} "
                          f"trials; this server allows at most {limits.max_trials} per study: "
                          "set max_trials or a smaller max_resource")


class HpodServicer(pb_grpc.HpodServicer):
    def __init__(self, manager: StudyManager, limits: Limits | None = None) -> None:
        self.m = manager
        self.limits = limits or Limits()
        self.watches: dict[str, int] = {}  # open WatchStudy streams per tenant

    # ---------------------------------------------------------------- studies

    @rpc
    async def CreateStudy(self, request: pb.CreateStudyRequest, context: Any) -> pb.Study:
        config = convert.config_from_spec(request.spec)
        _check_size(request.spec, config, self.limits)
        config = dataclasses.replace(config, tenant=tenancy.owner_for_new_study())
        live = await self.m.create(config)
        return convert.study_to_pb(live.engine, live.created)

    @rpc
    async def PlanStudy(self, request: pb.PlanStudyRequest, context: Any) -> pb.Plan:
        config = convert.config_from_spec(request.spec)
        return convert.plan_to_pb(config.build_algorithm().plan())

    @rpc
    async def GetStudy(self, request: pb.GetStudyRequest, context: Any) -> pb.Study:
        live = await self.m.read(request.study_id)
        return convert.study_to_pb(live.engine, live.created)

    @rpc
    async def ListStudies(self, request: pb.ListStudiesRequest, context: Any
                          ) -> pb.ListStudiesResponse:
        return pb.ListStudiesResponse(studies=[
            convert.study_to_pb(lv.engine, lv.created)
            for lv in sorted(self.m.studies.values(), key=lambda lv: lv.created)
            if tenancy.visible(lv.engine.config.tenant)])

    @rpc
    async def StopStudy(self, request: pb.StopStudyRequest, context: Any) -> pb.Study:
        await self.m.submit(request.study_id, {"op": "stop"})
        return await self.GetStudy(pb.GetStudyRequest(study_id=request.study_id), context)

    @rpc
    async def DeleteStudy(self, request: pb.DeleteStudyRequest, context: Any
                          ) -> pb.DeleteStudyResponse:
        await self.m.delete(request.study_id)
        return pb.DeleteStudyResponse()

    @rpc
    async def RaiseMaxResource(self, request: pb.RaiseMaxResourceRequest, context: Any
                               ) -> pb.Study:
        if len(self.m.get(request.study_id).engine.trials) >= self.limits.max_trials:
            raise EngineError("exhausted", f"the study has {self.limits.max_trials} trials, "
                              "the most this server allows per study")
        await self.m.submit(request.study_id, {"op": "raise_max_resource"})
        return await self.GetStudy(pb.GetStudyRequest(study_id=request.study_id), context)

    async def WatchStudy(self, request: pb.WatchStudyRequest, context: Any) -> Any:
        try:
            live = self.m.get(request.study_id)
        except EngineError as e:
            await context.abort(CODES[e.code], e.message)
            return
        tenant = tenancy.caller.get() or ""
        if self.watches.get(tenant, 0) >= self.limits.max_watches:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.limits.max_watches} watches are open already, the most "
                                "this server allows per tenant; close one first")
            return
        self.watches[tenant] = self.watches.get(tenant, 0) + 1
        metrics.WATCHES.inc()
        try:
            async for ev in self._events(live, request):
                yield ev
        finally:
            self.watches[tenant] -= 1
            metrics.WATCHES.dec()

    async def _events(self, live: Any, request: pb.WatchStudyRequest) -> Any:
        eng = live.engine
        async for eff in self.m.watch(request.study_id):
            if eff is None:
                return
            if eff.event == "progress" and not request.include_progress:
                continue
            ts = timestamp_pb2.Timestamp()
            ts.FromNanoseconds(time.time_ns())
            ev = pb.TrialEvent(kind=convert.EVENT_KINDS[eff.event], study_id=eng.study_id,
                               time=ts, study_state=convert.STUDY_STATES[eng.state])
            if eff.trial_id is not None and eff.trial_id in eng.trials:
                ev.trial_id = eff.trial_id
                ev.resource = eff.resource
                ev.value = eff.value if eff.value is not None else 0.0
                ev.trial.CopyFrom(convert.trial_to_pb(eng.study_id, eng.trials[eff.trial_id],
                                                      curve=False))
            yield ev

    # ---------------------------------------------------------------- trials

    @rpc
    async def ListTrials(self, request: pb.ListTrialsRequest, context: Any
                         ) -> pb.ListTrialsResponse:
        eng = (await self.m.read(request.study_id)).engine
        return pb.ListTrialsResponse(trials=[
            convert.trial_to_pb(eng.study_id, t, curve=request.include_curves)
            for _, t in sorted(eng.trials.items())])

    @rpc
    async def GetTrial(self, request: pb.GetTrialRequest, context: Any) -> pb.Trial:
        eng = (await self.m.read(request.study_id)).engine
        trial = eng.trials.get(request.trial_id)
        if trial is None:
            raise EngineError("not_found", f"no trial {request.trial_id} in study "
                              f"{request.study_id}")
        return convert.trial_to_pb(eng.study_id, trial)

    @rpc
    async def GetBestTrial(self, request: pb.GetBestTrialRequest, context: Any) -> pb.Trial:
        eng = (await self.m.read(request.study_id)).engine
        best = eng.best_trial()
        if best is None:
            raise EngineError("not_found", "no trial has a result yet")
        return convert.trial_to_pb(eng.study_id, best)

    @rpc
    async def GetParetoFront(self, request: pb.GetParetoFrontRequest, context: Any
                             ) -> pb.ParetoFront:
        return convert.pareto_to_pb((await self.m.read(request.study_id)).engine)

    # ---------------------------------------------------------------- ask/tell

    @rpc
    async def AskJob(self, request: pb.AskJobRequest, context: Any) -> pb.AskJobResponse:
        _need(request.study_id, "study_id")
        live = self.m.get(request.study_id)
        jobs = await self.m.submit(request.study_id, {
            "op": "ask", "free": 1, "external": True, "client": request.client_id})
        if jobs:
            payload = self.m.job_payload(live.engine, jobs[0])
            return pb.AskJobResponse(has_job=True, job=convert.job_to_pb(live.engine, payload))
        done = live.engine.state != "active"
        return pb.AskJobResponse(has_job=False, study_done=done,
                                 retry_after_seconds=0.0 if done else 0.5)

    @rpc
    async def ReportProgress(self, request: pb.ReportProgressRequest, context: Any
                             ) -> pb.ReportProgressResponse:
        _need(request.job_id, "job_id")
        decision = await self.m.submit(request.study_id, {
            "op": "progress", "job_id": request.job_id, "resource": request.resource,
            "value": request.value})
        return pb.ReportProgressResponse(
            decision=pb.DECISION_STOP if decision == "stop" else pb.DECISION_CONTINUE)

    @rpc
    async def CompleteJob(self, request: pb.CompleteJobRequest, context: Any
                          ) -> pb.CompleteJobResponse:
        _need(request.job_id, "job_id")
        if not math.isfinite(request.value):
            raise EngineError("invalid", f"value must be a finite number, got {request.value}; "
                              "report a diverged run with FailJob")
        await self.m.submit(request.study_id, {
            "op": "complete", "job_id": request.job_id, "value": request.value,
            "resource": request.resource or None, "cost": request.cost or None})
        return pb.CompleteJobResponse()

    @rpc
    async def FailJob(self, request: pb.FailJobRequest, context: Any) -> pb.FailJobResponse:
        _need(request.job_id, "job_id")
        await self.m.submit(request.study_id, {"op": "fail", "job_id": request.job_id,
                                               "reason": request.reason})
        return pb.FailJobResponse()
