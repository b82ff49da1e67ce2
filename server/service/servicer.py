"""The gRPC servicer: checks each request (``checks``), translates it to study-manager calls
and errors to status codes. A call never waits on Redis longer than STORE_WAIT."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from hpod.v1 import hpod_pb2 as pb
from hpod.v1 import hpod_pb2_grpc as pb_grpc
from redis import exceptions as redis_errors
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import algorithms, metrics, tenancy
from ..algorithms import SettingsError, SpaceError
from ..engine import EngineError
from ..manager import StudyManager
from ..options import Limits
from ..study import StudyConfig
from . import checks, convert, pages

log = logging.getLogger("hpod.server")

MAX_MESSAGE = 2048  # characters of an error message: no input is ever echoed at length
# How long a write may take before it answers UNAVAILABLE: a backstop behind redis-py's own
# 5 s socket timeout, for calls queued behind a stalled one on the study's lock. The write
# itself is not cancelled (a commit cut in half is worse than a late one).
STORE_WAIT = 10.0
# A write to a study that fits a model may also wait behind that study's fit (off the event
# loop, under the study's lock, seconds on a loaded machine): it is given this long.
FIT_WAIT = 120.0

CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
         "precondition": grpc.StatusCode.FAILED_PRECONDITION,
         "unavailable": grpc.StatusCode.UNAVAILABLE,
         "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED}


# Redis errors that say "not now" rather than "never": out of memory, a replica, a loading or
# busy server, a transaction discarded for one of those. The client should retry them
# (UNAVAILABLE). redis-py turns some codes into classes and strips the code from the message.
_TRANSIENT_CLASSES = (redis_errors.OutOfMemoryError, redis_errors.ReadOnlyError,
                      redis_errors.ExecAbortError, redis_errors.TryAgainError,
                      redis_errors.ClusterDownError, redis_errors.MasterDownError)
_TRANSIENT_CODES = {"OOM", "READONLY", "LOADING", "MISCONF", "BUSY", "NOREPLICAS",
                    "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "EXECABORT"}
_RETRY = ("the server cannot reach Redis right now or it did not answer in time; retry "
          "shortly (a repeated report is recognised as one)")


# Calls about one study: another replica's study is forwarded to its owner (server/routing.py).
ROUTED = frozenset({"GetStudy", "StopStudy", "DeleteStudy", "RaiseMaxResource", "ListTrials",
                    "GetTrial", "GetBestTrial", "GetParetoFront", "AskJob", "ReportProgress",
                    "CompleteJob", "FailJob"})


def _transient(e: RedisError) -> bool:
    code = getattr(e, "status_code", None) or str(e).split(" ", 1)[0]
    return isinstance(e, _TRANSIENT_CLASSES) or code in _TRANSIENT_CODES


def rpc(fn: Callable) -> Callable:
    """Map domain errors to status codes with the message a person can act on. Nothing
    escapes as UNKNOWN: a store that fails is UNAVAILABLE (retryable), a bug INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if fn.__name__ in ROUTED and getattr(self, "router", None) is not None:
                checks.name(request.study_id, "study_id", self.limits)
                forwarded = await self.router.unary(fn.__name__, request, context)
                if forwarded is not None:
                    return forwarded
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except (SettingsError, SpaceError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:MAX_MESSAGE])
        except EngineError as e:
            await context.abort(CODES[e.code], e.message[:MAX_MESSAGE])
        except (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError, OSError):
            await context.abort(grpc.StatusCode.UNAVAILABLE, _RETRY)
        except RedisError as e:
            if not _transient(e):
                log.exception("%s failed on a Redis error", fn.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__} failed on a "
                                    "storage error; it is in the server log")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{_RETRY} ({str(e)[:200]})")
        except Exception:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__} failed inside the "
                                "server; the traceback is in the server log")

    return wrapper


def _check_size(config: StudyConfig, limits: Limits) -> None:
    """Refuse a study that would create more trials than the server allows, before anything is
    stored. The spec's own size was checked before it was converted (``checks.spec``)."""
    planned = config.build_algorithm().plan().max_trials
    if not planned or planned > limits.max_trials:
        shown = f"{planned:.3g}" if planned and planned > 1e12 else planned or "unboundedly many"
        raise EngineError("invalid", f"this study would create {shown} "
                          f"trials; this server allows at most {limits.max_trials} per study: "
                          "set max_trials or a smaller max_resource")


async def _bounded(work: Awaitable[Any], wait: float = STORE_WAIT) -> Any:
    """``work``'s result, or UNAVAILABLE after ``wait`` seconds while it goes on."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.wait_for(asyncio.shield(task), wait)
    except asyncio.CancelledError:  # the client went away: the write still finishes
        task.add_done_callback(_log_late)
        raise
    except asyncio.TimeoutError:
        task.add_done_callback(_log_late)
        raise EngineError("unavailable", f"the call did not finish within {wait:g}s "
                          "(Redis slow or unreachable, or the study busy with a model fit); it "
                          "takes effect if it finishes later: "
                          "check before retrying a create, a repeated report is recognised as "
                          "one") from None


def _log_late(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a call whose caller had its answer or left failed later: %s",
                    task.exception())


async def _import_algorithm(spec: pb.StudySpec) -> None:
    """Import the spec's algorithm and sampler modules in a thread the first time one is
    named: CQR and CARBS pull in scikit-learn, torch and BoTorch, seconds that would otherwise
    stall every other request on the event loop."""
    wanted = [(spec.algorithm.name, algorithms.MODULES)]
    sampler = spec.algorithm.settings.fields.get("sampler")
    if sampler is not None and sampler.WhichOneof("kind") == "string_value":
        wanted.append((sampler.string_value, algorithms.SAMPLER_MODULES))
    todo = [table[name] for name, table in wanted if name in table
            and f"{algorithms.__name__}.{table[name]}" not in sys.modules]
    if todo:
        await asyncio.to_thread(lambda: [importlib.import_module(
            f"{algorithms.__name__}.{module}") for module in todo])


class HpodServicer(pb_grpc.HpodServicer):
    def __init__(self, manager: StudyManager, limits: Limits | None = None) -> None:
        self.m = manager
        self.limits = limits or Limits()
        self.watches: dict[str, int] = {}  # open WatchStudy streams per tenant
        # Set by the health probe (server/main.py): while Redis does not answer, a write is
        # refused at once (UNAVAILABLE, retryable) instead of waiting on the store.
        self.store_reachable = True
        self.router: Any = None  # server/routing.py's Router when replicas share the Redis

    def _writable(self) -> None:
        if not self.store_reachable:
            raise EngineError("unavailable", "the server cannot reach Redis (health checking "
                              "says NOT_SERVING); nothing was changed: retry shortly")

    async def _live(self, sid: str) -> Any:
        """The study for a read: waits while that study has an input in flight off the loop."""
        checks.name(sid, "study_id", self.limits, required=True)
        return await self.m.read(sid)

    async def _job_call(self, sid: str, job_id: str) -> None:
        """Ids bounded, then the study looked up (NOT_FOUND, also for another tenant's) before
        the values are judged: the answer to a stranger never depends on them."""
        checks.job_call(sid, job_id, self.limits)
        await self.m.wake(sid)  # an ended study resting out of memory is loaded first
        self.m.get(sid)

    async def _submit(self, sid: str, inp: dict[str, Any]) -> Any:
        checks.name(sid, "study_id", self.limits, required=True)
        self._writable()
        return await _bounded(self.m.submit(sid, inp), self._patience(sid))

    def _patience(self, sid: str) -> float:
        return FIT_WAIT if self.m.runs_off_loop(sid) else STORE_WAIT

    # ---------------------------------------------------------------- studies

    @rpc
    async def CreateStudy(self, request: pb.CreateStudyRequest, context: Any) -> pb.Study:
        checks.spec(request.spec, self.limits)
        await _import_algorithm(request.spec)
        config = convert.config_from_spec(request.spec)
        _check_size(config, self.limits)
        self._writable()
        if request.spec.trainer:
            checks.trainer(request.spec, await _bounded(self.m.store.declared_trainers(
                self.m.settings.lease_seconds)))
        config = dataclasses.replace(config, tenant=tenancy.owner_for_new_study())
        live = await _bounded(self.m.create(config))
        return convert.study_to_pb(live.engine, live.created)

    @rpc
    async def PlanStudy(self, request: pb.PlanStudyRequest, context: Any) -> pb.Plan:
        checks.spec(request.spec, self.limits)
        await _import_algorithm(request.spec)
        config = convert.config_from_spec(request.spec)
        return convert.plan_to_pb(config.build_algorithm().plan())

    @rpc
    async def GetStudy(self, request: pb.GetStudyRequest, context: Any) -> pb.Study:
        live = await self._live(request.study_id)
        return convert.study_to_pb(live.engine, live.created)

    @rpc
    async def ListStudies(self, request: pb.ListStudiesRequest, context: Any
                          ) -> pb.ListStudiesResponse:
        # Ordered by (creation time, id): a study created while a client pages through the
        # list comes last, so no page repeats or skips one.
        size = pages.size(request.page_size)
        after = pages.after(request.page_token, "studies")
        key = tuple(after) if after is not None else None
        if key is not None and (len(key) != 2 or not isinstance(key[0], int)
                                or not isinstance(key[1], str)):
            raise checks.invalid("page_token", "is not a next_page_token this listing "
                                 "returned; start again with an empty page_token")
        # Keyed by the creation time in nanoseconds, as Study.create_time carries it, so
        # pages merged from several replicas (server/routing.py) continue exactly.
        # An ended study resting out of memory (server/residency.py) is listed as its last
        # engine rendered it, without loading it.
        listed = [(lv.created, sid, lv.engine.config.tenant) for sid, lv in self.m.studies.items()]
        listed += [(r.created, sid, r.tenant) for sid, r in self.m.residency.resting.items()]
        rows = sorted((int(created * 1e9), sid) for created, sid, tenant in listed
                      if tenancy.visible(tenant)
                      and (key is None or (int(created * 1e9), sid) > key))
        views, seen = {}, 0
        for row in rows:  # a study deleted while the page is built is left out
            if len(views) >= size:
                break
            seen += 1
            if (view := await self._listed(row[1])) is not None:
                views[row] = view
        studies, last = pages.fill(list(views) + rows[seen:], size, views.__getitem__)
        resp = pb.ListStudiesResponse(studies=studies)
        if last is not None:
            resp.next_page_token = pages.token("studies", list(last))
        if self.router is not None and not self.router.local_only(context):
            return await self.router.list_studies(request, context, resp)
        return resp

    async def _listed(self, sid: str) -> pb.Study | None:
        """A study as a listing shows it: a resting one as its last engine rendered it, one
        whose input is being applied off the loop as of its last input (an engine is read
        only between inputs), so a listing never waits on a model fit; None if it is gone."""
        live = self.m.studies.get(sid)
        if live is None:
            resting = self.m.residency.resting.get(sid)
            return None if resting is None else pb.Study.FromString(resting.listing)
        if live.busy and live.listed is not None:
            return live.listed
        if live.busy:
            try:
                live = await self.m.read(sid)
            except EngineError:
                return None
        live.listed = convert.study_to_pb(live.engine, live.created, fidelity=False)
        return live.listed

    @rpc
    async def StopStudy(self, request: pb.StopStudyRequest, context: Any) -> pb.Study:
        await self._submit(request.study_id, {"op": "stop"})
        return await self.GetStudy(pb.GetStudyRequest(study_id=request.study_id), context)

    @rpc
    async def DeleteStudy(self, request: pb.DeleteStudyRequest, context: Any
                          ) -> pb.DeleteStudyResponse:
        await self._live(request.study_id)
        self._writable()
        await _bounded(self.m.delete(request.study_id))
        return pb.DeleteStudyResponse()

    @rpc
    async def RaiseMaxResource(self, request: pb.RaiseMaxResourceRequest, context: Any
                               ) -> pb.Study:
        if len((await self._live(request.study_id)).engine.trials) >= self.limits.max_trials:
            raise EngineError("exhausted", f"the study has {self.limits.max_trials} trials, "
                              "the most this server allows per study")
        await self._submit(request.study_id, {"op": "raise_max_resource"})
        return await self.GetStudy(pb.GetStudyRequest(study_id=request.study_id), context)

    async def WatchStudy(self, request: pb.WatchStudyRequest, context: Any) -> Any:
        try:
            checks.name(request.study_id, "study_id", self.limits)
            relay = (await self.router.stream("WatchStudy", request, context)
                     if self.router is not None else None)
        except EngineError as e:
            await context.abort(CODES[e.code], e.message[:MAX_MESSAGE])
            return
        except RedisError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _RETRY)
            return
        if relay is not None:
            async for ev in relay:
                yield ev
            return
        try:
            live = await self._live(request.study_id)
        except EngineError as e:
            await context.abort(CODES[e.code], e.message[:MAX_MESSAGE])
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
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:  # as in ``rpc``: never UNKNOWN
            log.exception("WatchStudy failed")
            await context.abort(grpc.StatusCode.INTERNAL, "WatchStudy failed inside the "
                                "server; the traceback is in the server log")
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
        eng = (await self._live(request.study_id)).engine
        size = pages.size(request.page_size)
        after = pages.after(request.page_token, "trials")
        if after is not None and (len(after) != 2 or after[0] != eng.study_id
                                  or not isinstance(after[1], int)):
            raise checks.invalid("page_token", "is not a next_page_token of this study's "
                                 "trials; start again with an empty page_token")
        start = after[1] if after is not None else None
        ids = sorted(t for t in eng.trials if start is None or t > start)
        trials, last = pages.fill(ids, size, lambda t: convert.trial_to_pb(
            eng.study_id, eng.trials[t], curve=request.include_curves))
        resp = pb.ListTrialsResponse(trials=trials)
        if last is not None:
            resp.next_page_token = pages.token("trials", [eng.study_id, last])
        return resp

    @rpc
    async def GetTrial(self, request: pb.GetTrialRequest, context: Any) -> pb.Trial:
        eng = (await self._live(request.study_id)).engine
        trial = eng.trials.get(request.trial_id)
        if trial is None:
            raise EngineError("not_found", f"no trial {request.trial_id} in study "
                              f"{request.study_id}")
        return convert.trial_to_pb(eng.study_id, trial)

    @rpc
    async def GetBestTrial(self, request: pb.GetBestTrialRequest, context: Any) -> pb.Trial:
        eng = (await self._live(request.study_id)).engine
        best = eng.best_trial()
        if best is None:
            raise EngineError("not_found", "no trial has a result yet")
        return convert.trial_to_pb(eng.study_id, best)

    @rpc
    async def GetParetoFront(self, request: pb.GetParetoFrontRequest, context: Any
                             ) -> pb.ParetoFront:
        return convert.pareto_to_pb((await self._live(request.study_id)).engine)

    # ---------------------------------------------------------------- ask/tell

    @rpc
    async def AskJob(self, request: pb.AskJobRequest, context: Any) -> pb.AskJobResponse:
        live = await self._live(request.study_id)
        checks.name(request.client_id, "client_id", self.limits)
        self._writable()
        job = await _bounded(self.m.ask_external(request.study_id, request.client_id),
                             self._patience(request.study_id))
        if job is not None:
            payload = self.m.job_payload(live.engine, job)
            return pb.AskJobResponse(has_job=True, job=convert.job_to_pb(live.engine, payload))
        done = live.engine.state != "active"
        return pb.AskJobResponse(has_job=False, study_done=done,
                                 retry_after_seconds=0.0 if done else 0.5)

    @rpc
    async def ReportProgress(self, request: pb.ReportProgressRequest, context: Any
                             ) -> pb.ReportProgressResponse:
        await self._job_call(request.study_id, request.job_id)
        checks.finite(request.resource, "resource", positive=True)
        decision = await self._submit(request.study_id, {
            "op": "progress", "job_id": request.job_id, "resource": request.resource,
            "value": request.value})
        return pb.ReportProgressResponse(
            decision=pb.DECISION_STOP if decision == "stop" else pb.DECISION_CONTINUE)

    @rpc
    async def CompleteJob(self, request: pb.CompleteJobRequest, context: Any
                          ) -> pb.CompleteJobResponse:
        await self._job_call(request.study_id, request.job_id)
        if not math.isfinite(request.value):
            raise EngineError("invalid", f"value must be a finite number, got {request.value}; "
                              "report a diverged run with FailJob")
        checks.finite(request.resource, "resource")
        checks.finite(request.cost, "cost")
        await self._submit(request.study_id, {
            "op": "complete", "job_id": request.job_id, "value": request.value,
            "resource": request.resource or None, "cost": request.cost or None})
        return pb.CompleteJobResponse()

    @rpc
    async def FailJob(self, request: pb.FailJobRequest, context: Any) -> pb.FailJobResponse:
        await self._job_call(request.study_id, request.job_id)
        checks.reason(request.reason)
        await self._submit(request.study_id, {"op": "fail", "job_id": request.job_id,
                                              "reason": request.reason})
        return pb.FailJobResponse()
