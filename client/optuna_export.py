"""Write an hpod study into any Optuna storage, once or live, so Optuna's tools read it.

    hpod study export STUDY --optuna-storage sqlite:///hpod.db        # a finished study
    hpod study export STUDY --optuna-storage hpod.journal --follow    # mirror while it runs

Client-side: the mirror follows ``WatchStudy`` and reads trials through the public API. How an
hpod trial becomes an Optuna trial (parameters, learning curve, state, user attributes) is
``hpod.server.optuna_mirror``, which the server's live mirror (``hpod server --optuna-storage URL``)
shares, so both write the same Optuna study ``hpod-<study id>`` the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hpod.server.optuna_mirror import (  # noqa: F401 (re-exported: names this module had)
    OPEN_STATES,
    SEGMENT_END,
    SEGMENT_START,
    Note,
    StudyMirror,
    open_storage,
    optuna_distributions,
    optuna_study_name,
    resource_per_step,
)
from hpod.v1 import hpod_pb2 as pb

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from .sdk import Event, Study


class OptunaMirror(StudyMirror):
    """Writes the trials of one hpod study, read through the SDK, into one Optuna study;
    idempotent, so exporting again (or restarting a live mirror) only adds what is new."""

    def __init__(self, study: Study, storage: str | BaseStorage) -> None:
        self.study = study
        super().__init__(storage, study.info)

    def sync_all(self, now: float | None = None) -> int:
        """Mirror every trial as it is now; returns how many trials the study has."""
        self.info = self.study.refresh()
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
        self.note(m, Note(ev.kind, ev.time, ev.resource, ev.trial.rung))
        if ev.kind == "progress" and ev.value is not None:
            step = self._step(ev.resource)
            if step not in m.steps:
                self.storage.set_trial_intermediate_value(m.optuna_id, step, ev.value)
                m.steps.add(step)
        if ev.kind in SEGMENT_END:
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

