"""Write an hpod study into any Optuna storage, once or live, so Optuna's tools read it.

    hpod study export STUDY --optuna-storage sqlite:///hpod.db        # a finished study
    hpod study export STUDY --optuna-storage hpod.journal --follow    # mirror while it runs

Each hpod trial becomes one Optuna trial of the study ``hpod-<study id>``: its parameters (with
the distributions of the study's search space), its learning curve as intermediate values (step =
resource / ``resource_per_step``, a study user attribute, 1 when every resource is whole) and its
state. Optuna trials cannot be reopened once finished, so a trial stays RUNNING while hpod may
still promote it (queued, running, paused) and is finished only at a final hpod state:

    completed at the maximum resource -> COMPLETE (value: the metric at that resource)
    completed below it, or stopped    -> PRUNED   (Optuna's reading of successive halving)
    failed, lost                      -> FAIL

so Optuna's best trial is hpod's: the best value among trials trained to the maximum resource.
hpod's bracket, rung, resource, cost and state are trial user attributes. A live mirror also
records when each curve point and each job segment happened (``step_times``, ``segments``),
which ``hpod.client.plots`` uses for the plots against wall time. Everything is client-side:
the mirror follows ``WatchStudy`` and reads trials through the public API.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from hpod.v1 import hpod_pb2 as pb

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import BaseStorage

    from .sdk import Event, Study, Trial

OPEN_STATES = ("queued", "running", "paused")
SEGMENT_START = ("created", "promoted", "resumed")
SEGMENT_END = ("paused", "completed", "stopped", "failed", "lost")


def optuna_study_name(study_id: str) -> str:
    return f"hpod-{study_id}"


def open_storage(url: str) -> BaseStorage:
    """An RDB URL (``sqlite:///x.db``, ``postgresql://...``), ``journal:PATH``, or a path to a
    journal file (anything without ``://``)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:") or "://" not in url:
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.get_storage(url)


def _plain(v: Any) -> Any:
    # Choices come back from JSON as doubles; whole ones were ints (as the server reads them).
    return int(v) if isinstance(v, float) and v.is_integer() else v


def optuna_distributions(spec: pb.StudySpec) -> dict[str, BaseDistribution]:
    """The study's search space as Optuna distributions (the exact inverse of spec.py)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, BaseDistribution] = {}
    for p in spec.search_space:
        kind = p.WhichOneof("domain")
        if kind == "float_range":
            r = p.float_range
            out[p.name] = FloatDistribution(r.low, r.high, log=r.scale == pb.SCALE_LOG)
        elif kind == "int_range":
            r = p.int_range
            out[p.name] = IntDistribution(int(r.low), int(r.high), log=r.scale == pb.SCALE_LOG)
        else:
            choices = [_plain(json_format.MessageToDict(c)) for c in p.categorical.choices]
            out[p.name] = CategoricalDistribution(choices)
    return out


def resource_per_step(info: pb.Study) -> float:
    """Optuna steps are ints: 1 when every resource of the plan is whole, else a thousandth."""
    res = info.spec.resource
    values = [res.max_resource, res.min_resource if res.HasField("min_resource") else 1.0]
    values += [r.r for b in info.plan.brackets for r in b.rungs]
    return 1.0 if all(float(v).is_integer() for v in values) else 1e-3


def _when(t: float | None) -> dt.datetime | None:
    return None if not t else dt.datetime.fromtimestamp(t)


@dataclass
class _Mirrored:
    """What the mirror knows about one hpod trial's Optuna twin."""

    optuna_id: int
    finished: bool
    steps: set[int] = field(default_factory=set)
    step_times: list[list[float]] = field(default_factory=list)  # [resource, unix time]
    segments: list[list[float]] = field(default_factory=list)    # [start, end, rung]
    open_segment: tuple[float, int] | None = None                # (start, rung)


class OptunaMirror:
    """Writes the trials of one hpod study into one Optuna study; idempotent, so exporting
    again (or restarting a live mirror) only adds what is new."""

    def __init__(self, study: Study, storage: str | BaseStorage) -> None:
        from optuna.study import StudyDirection

        self.study = study
        self.storage = open_storage(storage) if isinstance(storage, str) else storage
        info = study.info
        self.name = optuna_study_name(study.id)
        self.distributions = optuna_distributions(info.spec)
        self.per_step = resource_per_step(info)
        maximize = info.spec.objective.direction == pb.DIRECTION_MAXIMIZE
        direction = StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE
        self.optuna_study_id = self._open_study(direction)
        self.trials: dict[int, _Mirrored] = self._load_existing()

    # ------------------------------------------------------------ setup

    def _open_study(self, direction: Any) -> int:
        from optuna.exceptions import DuplicatedStudyError

        try:
            sid = self.storage.create_new_study([direction], self.name)
        except DuplicatedStudyError:
            return self.storage.get_study_id_from_name(self.name)
        info = self.study.info
        attrs = {"hpod_study_id": self.study.id, "resource_name": info.spec.resource.name
                 or "resource", "resource_per_step": self.per_step,
                 "metric": info.spec.objective.metric or "value",
                 "algorithm": info.spec.algorithm.name,
                 "max_resource": info.spec.resource.max_resource,
                 "plan": [[[r.n, r.r] for r in b.rungs] for b in info.plan.brackets]}
        for key, value in attrs.items():
            self.storage.set_study_user_attr(sid, key, value)
        return sid

    def _load_existing(self) -> dict[int, _Mirrored]:
        out = {}
        for ft in self.storage.get_all_trials(self.optuna_study_id, deepcopy=False):
            hid = ft.user_attrs.get("hpod_trial")
            if hid is None:
                continue
            out[int(hid)] = _Mirrored(
                ft._trial_id, ft.state.is_finished(), set(ft.intermediate_values),
                list(ft.user_attrs.get("step_times", [])),
                list(ft.user_attrs.get("segments", [])))
        return out

    @property
    def optuna_study(self) -> optuna.Study:
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.storage)

    # ------------------------------------------------------------ trials

    def _step(self, resource: float) -> int:
        return int(round(resource / self.per_step))

    def _final_state(self, trial: Trial) -> Any:
        from optuna.trial import TrialState

        if trial.state in OPEN_STATES:
            return TrialState.RUNNING
        if trial.state in ("failed", "lost") or trial.value is None:
            return TrialState.FAIL
        max_r = self.study.info.spec.resource.max_resource
        at_max = trial.state == "completed" and trial.resource >= max_r - 1e-9
        return TrialState.COMPLETE if at_max else TrialState.PRUNED

    def _user_attrs(self, trial: Trial, m: _Mirrored | None = None) -> dict[str, Any]:
        attrs = {"hpod_trial": trial.id, "hpod_state": trial.state, "bracket": trial.bracket,
                 "rung": trial.rung, "resource": trial.resource, "cost_s": trial.cost}
        if trial.error:
            attrs["error"] = trial.error[:500]
        if m is not None:
            attrs.update(step_times=m.step_times, segments=m.segments)
        return attrs

    def sync_trial(self, trial: Trial, now: float | None = None) -> None:
        """Bring the Optuna twin of ``trial`` (with its curve) up to date; ``now`` (live
        mirrors only) timestamps curve points that no progress event timed."""
        m = self.trials.get(trial.id)
        if m is None:
            self._create(trial, now)
        elif not m.finished:
            self._update(trial, m, now)

    def _create(self, trial: Trial, now: float | None) -> None:
        from optuna.trial import TrialState, create_trial

        state = self._final_state(trial)
        curve = {self._step(r): v for r, v in trial.curve}
        m = _Mirrored(-1, state.is_finished(), set(curve))
        if now is not None:
            m.step_times = [[r, now] for r, _ in trial.curve]
        params = {k: v for k, v in trial.config.items() if k in self.distributions}
        ft = create_trial(
            state=state, value=trial.value if state == TrialState.COMPLETE else None,
            params=params, distributions={k: self.distributions[k] for k in params},
            user_attrs=self._user_attrs(trial, m), intermediate_values=curve)
        if state == TrialState.PRUNED and trial.value is not None:
            ft.value = trial.value  # as Optuna's own tell does: the last value a pruned trial had
        if now is not None:
            ft.datetime_start = _when(now)
        m.optuna_id = self.storage.create_new_trial(self.optuna_study_id, template_trial=ft)
        self.trials[trial.id] = m

    def _update(self, trial: Trial, m: _Mirrored, now: float | None = None) -> None:
        for r, v in trial.curve:
            step = self._step(r)
            if step not in m.steps:
                self.storage.set_trial_intermediate_value(m.optuna_id, step, v)
                m.steps.add(step)
                if now is not None:
                    m.step_times.append([r, now])
        for key, value in self._user_attrs(trial, m).items():
            self.storage.set_trial_user_attr(m.optuna_id, key, value)
        state = self._final_state(trial)
        if state.is_finished():
            values = None if trial.value is None or state.name == "FAIL" else [trial.value]
            self.storage.set_trial_state_values(m.optuna_id, state, values)
            m.finished = True

    def sync_all(self, now: float | None = None) -> int:
        """Mirror every trial as it is now; returns how many trials the study has."""
        self.study.refresh()
        trials = self.study.trials(curves=True)
        for t in trials:
            self.sync_trial(t, now)
        return len(trials)

    # ------------------------------------------------------------ live

    def on_event(self, ev: Event) -> None:
        """Apply one WatchStudy event (with progress points). Curve points are written as
        they come; at the end of a job segment the whole trial is read again, so a point the
        stream missed (the watch starts after the study did) is filled in."""
        if ev.trial is None or ev.trial_id is None:
            return
        m = self.trials.get(ev.trial_id)
        if m is None:
            self.sync_trial(self.study.trial(ev.trial_id), now=ev.time)
            m = self.trials[ev.trial_id]
            # The trial was read after the event: its points' own progress events follow in
            # the stream and time them, so the creation time must not stand in for theirs.
            m.step_times = []
        if m.finished:
            return
        if ev.kind in SEGMENT_START:
            m.open_segment = (ev.time, ev.trial.rung)
        elif ev.kind == "progress" and ev.value is not None:
            step = self._step(ev.resource)
            m.step_times.append([ev.resource, ev.time])
            if step not in m.steps:
                self.storage.set_trial_intermediate_value(m.optuna_id, step, ev.value)
                m.steps.add(step)
        if ev.kind in SEGMENT_END:
            if m.open_segment is not None:
                start, rung = m.open_segment
                m.segments.append([start, ev.time, rung])
                m.open_segment = None
            self._update(self.study.trial(ev.trial_id), m, ev.time)

    def follow(self, on_event: Callable[[Event], None] | None = None) -> int:
        """Mirror the study live until it ends; returns how many trials it has."""
        events = self.study.watch(include_progress=True)
        # Trials so far first; what happens before the stream is open is caught up at the
        # next segment end of each trial (it is read again) and by the final sync. Points no
        # progress event timed get the time the mirror first saw them.
        self.sync_all(now=time.time())
        for ev in events:
            self.on_event(ev)
            if on_event is not None:
                on_event(ev)
        return self.sync_all(now=time.time())


def export_study(study: Study, storage: str | BaseStorage, follow: bool = False,
                 on_event: Callable[[Event], None] | None = None) -> OptunaMirror:
    """Mirror ``study`` into ``storage``: once, or with ``follow`` until the study ends."""
    mirror = OptunaMirror(study, storage)
    if follow and study.refresh().state == pb.STUDY_STATE_ACTIVE:
        mirror.follow(on_event)
    else:
        mirror.sync_all()
    return mirror

