"""The one place on the server that knows the wire types: protobuf messages <-> domain data."""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from hpod.v1 import hpod_pb2 as pb

from ..algorithms import Plan, Resource, SearchSpace, SettingsError
from ..algorithms.base import fidelity_source, pareto_source
from ..algorithms.space import Categorical, Float, Int, Param, SpaceError
from ..engine import EngineError, StudyEngine, TrialRec
from ..study import StudyConfig

TRIAL_STATES = {
    "queued": pb.TRIAL_STATE_QUEUED, "running": pb.TRIAL_STATE_RUNNING,
    "paused": pb.TRIAL_STATE_PAUSED, "completed": pb.TRIAL_STATE_COMPLETED,
    "stopped": pb.TRIAL_STATE_STOPPED, "failed": pb.TRIAL_STATE_FAILED,
    "lost": pb.TRIAL_STATE_LOST,
}
STUDY_STATES = {"active": pb.STUDY_STATE_ACTIVE, "completed": pb.STUDY_STATE_COMPLETED,
                "stopped": pb.STUDY_STATE_STOPPED, "failed": pb.STUDY_STATE_FAILED,
                "quarantined": pb.STUDY_STATE_QUARANTINED}
EVENT_KINDS = {
    "created": pb.TrialEvent.CREATED, "progress": pb.TrialEvent.PROGRESS,
    "promoted": pb.TrialEvent.PROMOTED, "paused": pb.TrialEvent.PAUSED,
    "stopped": pb.TrialEvent.STOPPED, "completed": pb.TrialEvent.COMPLETED,
    "failed": pb.TrialEvent.FAILED, "lost": pb.TrialEvent.LOST,
    "study_ended": pb.TrialEvent.STUDY_ENDED, "resumed": pb.TrialEvent.RESUMED,
}


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)


def dict_to_struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


# ---------------------------------------------------------------- spec -> domain


def param_from_pb(p: pb.Parameter) -> Param:
    kind = p.WhichOneof("domain")
    log = None
    if kind == "float_range":
        log = p.float_range.scale == pb.SCALE_LOG
        return Float(p.name, p.float_range.low, p.float_range.high, log)
    if kind == "int_range":
        log = p.int_range.scale == pb.SCALE_LOG
        return Int(p.name, int(p.int_range.low), int(p.int_range.high), log)
    if kind == "categorical":
        choices = tuple(json_format.MessageToDict(v) for v in p.categorical.choices)
        return Categorical(p.name, tuple(_plain(c) for c in choices))
    raise SpaceError(f"search_space.{p.name or '?'}",
                     "set one of float_range, int_range or categorical")


def _plain(v: Any) -> Any:
    """Whole numbers from JSON (which has only doubles) become ints again."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def config_from_spec(spec: pb.StudySpec) -> StudyConfig:
    """Domain config from the wire, validated; raises SettingsError/SpaceError naming the
    field."""
    space = SearchSpace(tuple(param_from_pb(p) for p in spec.search_space))
    res = spec.resource
    if res.max_resource <= 0 or not math.isfinite(res.max_resource):
        raise SettingsError("resource.max_resource", "set the maximum resource per trial "
                            "(e.g. 27 epochs); it must be a finite number > 0")
    resource = Resource(
        max_resource=res.max_resource,
        min_resource=res.min_resource if res.HasField("min_resource") else 1.0,
        eta=res.eta if res.HasField("eta") else 3,
        name=res.name or "epoch",
    )
    # A spec that names no algorithm gets ``auto`` (DESIGN.md, "auto": the default).
    algorithm = spec.algorithm.name or "auto"
    settings = struct_to_dict(spec.algorithm.settings)
    settings = {k: _plain(v) for k, v in settings.items()}
    config = StudyConfig(
        space=space, resource=resource, algorithm=algorithm, settings=settings,
        seed=int(spec.seed), max_trials=spec.max_trials or None, name=spec.name,
        metric=spec.objective.metric or "loss",
        maximize=spec.objective.direction == pb.DIRECTION_MAXIMIZE,
        trainer=spec.trainer, trainer_settings=struct_to_dict(spec.trainer_settings),
        max_retries=spec.max_retries if spec.HasField("max_retries") else 2,
    )
    config.check()
    return config


# ---------------------------------------------------------------- domain -> wire


def plan_to_pb(plan: Plan) -> pb.Plan:
    return pb.Plan(
        brackets=[pb.Bracket(s=b.s, rungs=[pb.Rung(n=r.n, r=r.r) for r in b.rungs])
                  for b in plan.brackets],
        total_resource=plan.total_resource or 0.0,
        incremental_resource=plan.incremental_resource or 0.0,
        max_trials=plan.max_trials or 0,
        notes=list(plan.notes),
    )


def trial_to_pb(sid: str, t: TrialRec, curve: bool = True) -> pb.Trial:
    msg = pb.Trial(study_id=sid, id=t.id, config=dict_to_struct(t.config),
                   state=TRIAL_STATES[t.state], resource=t.resource,
                   has_value=t.value is not None, value=t.value or 0.0, bracket=t.bracket,
                   rung=t.rung, cost=t.cost, lost_jobs=t.lost_jobs, error=t.error,
                   samples_per_second=t.samples_per_second,
                   warm_resumes=t.warm_resumes, segments=t.segments,
                   checkpoint_bytes=t.checkpoint_bytes)
    if curve:
        msg.curve.extend(pb.CurvePoint(resource=r, value=v) for r, v in t.curve)
    return msg


def spec_to_pb(config: StudyConfig) -> pb.StudySpec:
    params = []
    for p in config.space.params:
        if isinstance(p, Float):
            params.append(pb.Parameter(name=p.name, float_range=pb.FloatRange(
                low=p.low, high=p.high, scale=pb.SCALE_LOG if p.log else pb.SCALE_LINEAR)))
        elif isinstance(p, Int):
            params.append(pb.Parameter(name=p.name, int_range=pb.IntRange(
                low=p.low, high=p.high, scale=pb.SCALE_LOG if p.log else pb.SCALE_LINEAR)))
        else:
            cat = pb.Categorical()
            for c in p.choices:
                cat.choices.add().CopyFrom(json_format.ParseDict(c, struct_pb2.Value()))
            params.append(pb.Parameter(name=p.name, categorical=cat))
    r = config.resource
    return pb.StudySpec(
        name=config.name, search_space=params,
        objective=pb.Objective(metric=config.metric, direction=pb.DIRECTION_MAXIMIZE
                               if config.maximize else pb.DIRECTION_MINIMIZE),
        resource=pb.ResourceSpec(name=r.name, min_resource=r.min_resource,
                                 max_resource=r.max_resource, eta=r.eta),
        algorithm=pb.AlgorithmSpec(name=config.algorithm,
                                   settings=dict_to_struct(dict(config.settings))),
        seed=config.seed, max_trials=config.max_trials or 0, trainer=config.trainer,
        trainer_settings=dict_to_struct(dict(config.trainer_settings)),
        max_retries=config.max_retries,
    )


def study_to_pb(eng: StudyEngine, created: float, fidelity: bool = True) -> pb.Study:
    """The study as the wire shows it; ``fidelity=False`` leaves out auto's decision log (one
    entry per trial), as a listing of many studies should."""
    counts = eng.counts()
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(created * 1e9))
    spec = spec_to_pb(eng.config)
    spec.resource.max_resource = eng.max_resource()  # ID-HB may have raised it
    msg = pb.Study(id=eng.study_id, spec=spec, state=STUDY_STATES[eng.state], error=eng.error,
                   checkpoint_bytes=eng.checkpoint_bytes,
                   create_time=ts, trials_total=counts["total"],
                   trials_running=counts["running"], trials_finished=counts["finished"],
                   resource_used=eng.resource_used, cost_used=eng.cost_used,
                   plan=plan_to_pb(eng.algorithm.plan()))
    best = eng.best_trial()
    if best is not None:
        msg.best_trial.CopyFrom(trial_to_pb(eng.study_id, best, curve=False))
    source = fidelity_source(eng.algorithm)
    if fidelity and source is not None:
        msg.fidelity.CopyFrom(fidelity_to_pb(source.fidelity_report(), source.decision_log()))
    return msg


def fidelity_to_pb(report: dict[str, Any], decisions: list[dict[str, Any]]
                   ) -> pb.FidelityPolicy:
    """auto's ``fidelity_report()`` and ``decision_log()`` on the wire."""
    return pb.FidelityPolicy(
        trust=[pb.LevelTrust(resource=t["resource"], rho=t["rho"], against=t["against"],
                             pairs=t["pairs"], agreement=t["agreement"])
               for t in report["trust"]],
        bracket_start=report["bracket_start"], bracket_weights=report["bracket_weights"],
        decisions=[pb.FidelityDecision(trial_id=d["trial"], bracket=d["bracket"],
                                       start_resource=d["start_resource"], why=d["why"])
                   for d in decisions])


def pareto_to_pb(eng: StudyEngine) -> pb.ParetoFront:
    """The algorithm's cost/value front and scaling fits. FAILED_PRECONDITION (EngineError) for
    an algorithm that keeps no front."""
    alg = pareto_source(eng.algorithm)
    if alg is None:
        raise EngineError("precondition", f"algorithm {eng.config.algorithm!r} keeps no "
                          "cost/value Pareto front; only 'carbs', 'asha-carbs' and schedulers "
                          "with sampler 'carbs' do")
    front = alg.pareto_front()
    groups = alg.pareto_groups()
    # A multi-fidelity front point is a configuration at a resource: show that resource too.
    configs = alg.pareto_configs()
    msg = pb.ParetoFront(cost_source=eng.config.cost_source)
    for (tid, cost, value), members, config in zip(front, groups, configs, strict=True):
        msg.points.append(pb.ParetoPoint(
            trial_id=tid, cost=cost,
            # Algorithms minimise; the wire shows the metric as the trainer reported it.
            value=-value if eng.config.maximize else value,
            config=dict_to_struct(config), trial_ids=members))
    for name, fit in alg.scaling_fit().items():
        log_param = fit.get("transform") == "log"
        msg.fits.append(pb.ScalingFit(
            parameter=name, exponent=fit["exponent"], intercept=fit["intercept"],
            coefficient=10.0 ** fit["intercept"] if log_param else 0.0,
            transform=str(fit.get("transform", ""))))
    return msg


def job_to_pb(eng: StudyEngine, payload: dict[str, Any]) -> pb.Job:
    return pb.Job(study_id=eng.study_id, job_id=payload["job_id"],
                  trial_id=payload["trial_id"], config=dict_to_struct(payload["config"]),
                  from_resource=payload["from_resource"], to_resource=payload["to_resource"],
                  bracket=payload["bracket"] or 0, rung=payload["rung"] or 0,
                  max_resource=payload["max_resource"], seed=payload["seed"])


def stored_study_to_pb(sid: str, stored: dict[str, str], note: str) -> pb.Study:
    """A study as its hash in Redis shows it (``RedisStore.study_hashes``): spec, state and
    the summary of its last commit, with ``note`` (why it is not live) as its plan's only
    note; no plan or checkpoint figures, which only the rebuilt engine knows."""
    config = StudyConfig.from_dict(json.loads(stored["config"]))
    summary = json.loads(stored.get("summary") or "{}")
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(float(stored.get("created") or 0) * 1e9))
    msg = pb.Study(id=sid, spec=spec_to_pb(config), create_time=ts,
                   state=STUDY_STATES.get(stored.get("state", ""), pb.STUDY_STATE_ACTIVE),
                   error=stored.get("error", ""), trials_total=summary.get("total", 0),
                   trials_running=summary.get("running", 0),
                   trials_finished=summary.get("finished", 0),
                   resource_used=summary.get("resource_used", 0.0),
                   cost_used=summary.get("cost_used", 0.0), plan=pb.Plan(notes=[note]))
    best = summary.get("best")
    if best:
        msg.best_trial.CopyFrom(pb.Trial(study_id=sid, id=best["trial"], has_value=True,
                                         value=best["value"]))
    return msg
