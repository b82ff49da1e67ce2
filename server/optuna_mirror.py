"""hpod trials as Optuna trials: the one mapping both mirrors use.

Two callers write hpod studies into an Optuna storage with this module: the client's export
(``hpod study export --optuna-storage URL [--follow]``, ``hpod.client.optuna_export``), which
reads a study through the public API, and the server's live mirror (``hpod server
--optuna-storage URL``, ``hpod.server.optuna_live``), which reads the studies in its memory.
Both hand :meth:`StudyMirror.sync_trial` objects with the attributes of an hpod trial (``id``,
``config``, ``state``, ``value``, ``resource``, ``bracket``, ``rung``, ``cost``, ``curve``,
``error``): the SDK's ``Trial`` and the engine's ``TrialRec`` both have them.

Each hpod trial becomes one Optuna trial of the study ``<study name> [<study id>]`` (``hpod-<study
id>`` when it has no name, or when an earlier mirror already wrote it so), whose metric name is the
study's objective metric: its parameters (with
the distributions of the study's search space), its learning curve as intermediate values (step =
resource / ``resource_per_step``, a study user attribute, 1 when every resource is whole) and its
state. Optuna trials cannot be reopened once finished, so a trial stays RUNNING while hpod may
still promote it (queued, running, paused) and is finished only at a final hpod state, or, in a
synchronous ``hyperband`` study, once as many trials of its bracket as the plan promotes have
gone past the rung it waits at (it will not be promoted: it is PRUNED then, so its timeline bar
ends when the rung's promotions are over, not when the study ends):

    completed at the maximum resource -> COMPLETE (value: the metric at that resource)
    completed below it, or stopped    -> PRUNED   (Optuna's reading of successive halving)
    failed, lost                      -> FAIL

so Optuna's best trial is hpod's: the best value among trials trained to the maximum resource.
hpod's bracket, rung, resource, cost and state are trial user attributes. A live mirror also
records when each curve point and each job segment happened (``step_times``, ``segments``),
which ``hpod.client.plots`` uses for the plots against wall time.

A mirror is idempotent: it finds the Optuna twins of trials already written (by their
``hpod_trial`` user attribute) when it opens the study, so exporting again, or restarting a
live mirror or the server, adds only what is new and never duplicates a trial.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from hpod.v1 import hpod_pb2 as pb

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import BaseStorage

OPEN_STATES = ("queued", "running", "paused")
SEGMENT_START = ("created", "promoted", "resumed")
SEGMENT_END = ("paused", "completed", "stopped", "failed", "lost")
METRIC_NAMES_ATTR = "study:metric_names"  # optuna.study.study._SYSTEM_ATTR_METRIC_NAMES


def optuna_study_name(info: pb.Study | str) -> str:
    """The Optuna study's name: the hpod study's own name with its id (names need not be
    unique in hpod, they must be in Optuna), or ``hpod-<id>`` for an unnamed study."""
    if isinstance(info, str):
        return legacy_study_name(info)
    name = " ".join(info.spec.name.split())
    return f"{name} [{info.id}]" if name else legacy_study_name(info.id)


def legacy_study_name(study_id: str) -> str:
    """What earlier mirrors called every study: found and reused, never duplicated."""
    return f"hpod-{study_id}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or "://" not in url


def open_storage(url: str) -> BaseStorage:
    """An RDB URL (``sqlite:///x.db``, ``postgresql://...``), ``journal:PATH``, or a path to a
    journal file (anything without ``://``)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if is_journal(url):
        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.get_storage(url)


def check_storage_url(url: str) -> str | None:
    """What is wrong with ``url`` as an Optuna storage, without connecting to it (None: it
    looks usable). Catches what no retry can fix: a malformed URL, an unknown database, a
    missing driver, a journal file that cannot be created."""
    if not url.strip():
        return "it is empty"
    if is_journal(url):
        path = Path(url.removeprefix("journal:")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab"):
                pass
        except OSError as e:
            return f"the journal file cannot be written: {e}"
        return None
    try:
        import sqlalchemy
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    except ImportError as e:  # pragma: no cover - optuna depends on SQLAlchemy
        return f"RDB storages need SQLAlchemy: {e}"
    try:
        engine = sqlalchemy.create_engine(url)  # parses and loads the driver; connects lazily
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        return (f"not an RDB URL SQLAlchemy knows ({e}); use e.g. sqlite:///hpod.db, "
                "postgresql://user@host/db, or a journal file path")
    except ImportError as e:
        return f"the database driver is not installed ({e})"
    engine.dispose()
    return None


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for logs."""
    if is_journal(url):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://..."


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
class Note:
    """A trial event seen live (a WatchStudy event, or an event the server published), kept
    only for its time: when a curve point was reported, when a job segment began or ended."""

    kind: str
    time: float
    resource: float = 0.0
    rung: int = 0


@dataclass
class _Mirrored:
    """What the mirror knows about one hpod trial's Optuna twin."""

    optuna_id: int
    finished: bool
    steps: set[int] = field(default_factory=set)
    step_times: list[list[float]] = field(default_factory=list)  # [resource, unix time]
    segments: list[list[float]] = field(default_factory=list)    # [start, end, rung]
    open_segment: tuple[float, int] | None = None                # (start, rung)
    attrs: dict[str, Any] = field(default_factory=dict)          # user attrs as written


class StudyMirror:
    """Writes the trials of one hpod study (described by ``info``, its ``hpod.v1.Study``) into
    one Optuna study. Not thread-safe: one thread writes through it at a time."""

    def __init__(self, storage: str | BaseStorage, info: pb.Study) -> None:
        from optuna.study import StudyDirection

        self.storage = open_storage(storage) if isinstance(storage, str) else storage
        self.info = info
        self.name = optuna_study_name(info)
        self.distributions = optuna_distributions(info.spec)
        self.per_step = resource_per_step(info)
        maximize = info.spec.objective.direction == pb.DIRECTION_MAXIMIZE
        direction = StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE
        self.optuna_study_id = self._open_study(direction)
        self.trials: dict[int, _Mirrored] = self._load_existing()
        # Synchronous Hyperband promotes a fixed number of each rung's trials, so once that many
        # have gone on, a trial still paused at the rung will never train again: it is
        # finished (PRUNED) then, and its timeline ends there instead of at the study's end.
        self.synchronous = info.spec.algorithm.name == "hyperband"
        self.planned = {(b.s, i): r.n for b in info.plan.brackets for i, r in enumerate(b.rungs)}
        self.reached: dict[tuple[int, int], set[int]] = {}  # (bracket, rung) -> trial ids
        self.waiting: dict[int, Any] = {}         # hpod id -> a paused trial not yet passed

    # ------------------------------------------------------------ setup

    def _open_study(self, direction: Any) -> int:
        from optuna.exceptions import DuplicatedStudyError

        legacy = legacy_study_name(self.info.id)
        if legacy != self.name:
            try:  # a study an earlier mirror wrote under the old name: keep writing there
                self.storage.get_study_id_from_name(legacy)
                self.name = legacy
            except KeyError:
                pass
        try:
            sid = self.storage.create_new_study([direction], self.name)
        except DuplicatedStudyError:
            sid = self.storage.get_study_id_from_name(self.name)
            # The steps already written keep their meaning, whatever the plan is now.
            written = self.storage.get_study_user_attrs(sid).get("resource_per_step")
            if written:
                self.per_step = float(written)
            return sid
        info = self.info
        attrs = {"hpod_study_id": info.id, "resource_name": info.spec.resource.name
                 or "resource", "resource_per_step": self.per_step,
                 "metric": info.spec.objective.metric or "value",
                 "algorithm": info.spec.algorithm.name,
                 "max_resource": info.spec.resource.max_resource,
                 "plan": [[[r.n, r.r] for r in b.rungs] for b in info.plan.brackets]}
        for key, value in attrs.items():
            self.storage.set_study_user_attr(sid, key, value)
        # Optuna's own record of the objective's name (Study.set_metric_names), which the
        # dashboard and trials_dataframe show instead of "Objective 0".
        self.storage.set_study_system_attr(sid, METRIC_NAMES_ATTR,
                                           [info.spec.objective.metric or "value"])
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
                list(ft.user_attrs.get("segments", [])), attrs=dict(ft.user_attrs))
        return out

    @property
    def optuna_study(self) -> optuna.Study:
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.storage)

    # ------------------------------------------------------------ trials

    def _step(self, resource: float) -> int:
        return int(round(resource / self.per_step))

    def _final_state(self, trial: Any) -> Any:
        from optuna.trial import TrialState

        if trial.state in OPEN_STATES:
            return TrialState.PRUNED if self._passed_over(trial) else TrialState.RUNNING
        if trial.state in ("failed", "lost") or trial.value is None:
            return TrialState.FAIL
        max_r = self.info.spec.resource.max_resource
        at_max = trial.state == "completed" and trial.resource >= max_r - 1e-9
        return TrialState.COMPLETE if at_max else TrialState.PRUNED

    def _passed_over(self, trial: Any) -> bool:
        """A paused trial of a synchronous study whose next rung has all its planned trials."""
        if not (self.synchronous and trial.state == "paused" and trial.value is not None):
            return False
        key = (trial.bracket, trial.rung + 1)
        return key in self.planned and len(self.reached.get(key, ())) >= self.planned[key]

    def _track(self, trial: Any, now: float | None) -> None:
        """After a trial is written: count the rungs it reached, remember it if it waits at
        one, and finish the waiting trials of its bracket that are now passed over."""
        if not self.synchronous:
            return
        for rung in range(trial.rung + 1):
            self.reached.setdefault((trial.bracket, rung), set()).add(trial.id)
        m = self.trials.get(trial.id)
        if trial.state == "paused" and m is not None and not m.finished:
            self.waiting[trial.id] = trial
        else:
            self.waiting.pop(trial.id, None)
        passed = [w for w in self.waiting.values()
                  if w.bracket == trial.bracket and self._passed_over(w)]
        for w in passed:
            self.waiting.pop(w.id, None)
        for w in passed:  # (their own _track finds nothing new: they reached no new rung)
            if not self.trials[w.id].finished:
                self._update(w, self.trials[w.id], now)

    def _user_attrs(self, trial: Any, m: _Mirrored) -> dict[str, Any]:
        # A passed-over trial is finished here before hpod ends it: it gets the state hpod
        # gives such a trial (completed, at its rung), since a finished twin cannot change.
        state = "completed" if self._passed_over(trial) else trial.state
        attrs = {"hpod_trial": trial.id, "hpod_state": state, "bracket": trial.bracket,
                 "rung": trial.rung, "resource": trial.resource, "cost_s": trial.cost}
        if trial.error:
            attrs["error"] = trial.error[:500]
        attrs.update(step_times=m.step_times, segments=m.segments)
        return attrs

    def note(self, m: _Mirrored, note: Note) -> None:
        """Record when something happened to a trial (memory only; written with its attrs)."""
        if note.kind in SEGMENT_START:
            m.open_segment = (note.time, note.rung)
        elif note.kind == "progress":
            m.step_times.append([note.resource, note.time])
        if note.kind in SEGMENT_END and m.open_segment is not None:
            start, rung = m.open_segment
            m.segments.append([start, note.time, rung])
            m.open_segment = None

    def sync_trial(self, trial: Any, now: float | None = None, notes: Iterable[Note] = ()
                   ) -> None:
        """Bring the Optuna twin of ``trial`` (with its curve) up to date. ``notes`` time what
        happened to it since the last sync; ``now`` (live mirrors only) times the curve points
        that no note timed."""
        m = self.trials.get(trial.id)
        if m is None:
            self._create(trial, now, list(notes))
        elif not m.finished:
            timed = set()
            for n in notes:
                self.note(m, n)
                if n.kind == "progress":
                    timed.add(self._step(n.resource))
            self._update(trial, m, now, timed)

    def _create(self, trial: Any, now: float | None, notes: list[Note]) -> None:
        from optuna.trial import TrialState, create_trial

        state = self._final_state(trial)
        curve = {self._step(r): v for r, v in trial.curve}
        m = _Mirrored(-1, state.is_finished(), set(curve))
        for n in notes:
            self.note(m, n)
        if now is not None:
            timed = {self._step(r) for r, _ in m.step_times}
            m.step_times += [[r, now] for r, _ in trial.curve if self._step(r) not in timed]
        params = {k: v for k, v in trial.config.items() if k in self.distributions}
        attrs = self._user_attrs(trial, m)
        ft = create_trial(
            state=state, value=trial.value if state == TrialState.COMPLETE else None,
            params=params, distributions={k: self.distributions[k] for k in params},
            user_attrs=attrs, intermediate_values=curve)
        if state == TrialState.PRUNED and trial.value is not None:
            ft.value = trial.value  # as Optuna's own tell does: the last value a pruned trial had
        start = notes[0].time if notes else now
        if start is not None:
            ft.datetime_start = _when(start)
        m.optuna_id = self.storage.create_new_trial(self.optuna_study_id, template_trial=ft)
        m.attrs = _copied(attrs)
        self.trials[trial.id] = m
        self._track(trial, now)

    def _update(self, trial: Any, m: _Mirrored, now: float | None = None,
                timed: set[int] | frozenset[int] = frozenset()) -> None:
        for r, v in trial.curve:
            step = self._step(r)
            if step not in m.steps:
                self.storage.set_trial_intermediate_value(m.optuna_id, step, v)
                m.steps.add(step)
                if now is not None and step not in timed:
                    m.step_times.append([r, now])
        for key, value in self._user_attrs(trial, m).items():
            if m.attrs.get(key, _MISSING) != value:
                self.storage.set_trial_user_attr(m.optuna_id, key, value)
                m.attrs[key] = _copied(value)
        state = self._final_state(trial)
        if state.is_finished():
            values = None if trial.value is None or state.name == "FAIL" else [trial.value]
            self.storage.set_trial_state_values(m.optuna_id, state, values)
            m.finished = True
        self._track(trial, now)


_MISSING = object()


def _copied(value: Any) -> Any:
    """A copy of what was written, so later appends to the live lists show as changes."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value
