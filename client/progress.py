"""Live progress of a study in the terminal (``rich``), plain lines when not a terminal.

The live view shows the resource used against the plan, one bar per bracket and rung (trials
that finished the rung out of the rung's size), the current best, how many workers are busy,
and the latest events as they happen.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn

if TYPE_CHECKING:
    from .sdk import Event, Study, Trial


def _best(study: Study) -> str:
    b = study.info.best_trial
    return f"best {b.value:.4g} (trial {b.id})" if study.info.HasField("best_trial") else "best -"


def watch_with_progress(study: Study, console: Console | None = None) -> None:
    """Follow the study's events until it ends, showing resource used against the plan."""
    console = console or Console(file=sys.stderr)
    total = study.info.plan.incremental_resource or None
    unit = study.info.spec.resource.name or "resource"
    if not console.is_terminal:
        for ev in study.watch():
            if ev.kind in ("paused", "completed", "failed", "lost", "stopped", "study_ended"):
                info = study.refresh()
                console.print(f"[{ev.kind}] trial {ev.trial_id} "
                              f"{'' if ev.value is None else f'value {ev.value:.4g} '}"
                              f"| {info.resource_used:g}/{total or 0:g} {unit} | "
                              f"{info.trials_finished}/{info.trials_total} trials | "
                              f"{_best(study)}", highlight=False, markup=False)
        return
    LiveView(study, console).run()


class LiveView:
    """The rich view of ``hpod study watch``: rebuilt from the trials it tracks by event."""

    def __init__(self, study: Study, console: Console, events: int = 8) -> None:
        self.study = study
        self.console = console
        self.unit = study.info.spec.resource.name or "resource"
        self.trials: dict[int, Trial] = {t.id: t for t in study.trials(curves=False)}
        self.events: deque[str] = deque(maxlen=events)
        self.refreshed = 0.0
        self.bars = Progress(TextColumn("{task.description:>22}"), BarColumn(),
                             TextColumn("{task.completed:>5.0f}/{task.total:<5.0f}"),
                             TextColumn("{task.fields[unit]}"), console=console)
        self.overall = self.bars.add_task(f"study {study.id}", unit=f"{self.unit}s",
                                          total=study.info.plan.incremental_resource or None)
        self.rungs = {(b.s, i): self.bars.add_task(f"bracket {b.s} rung {i} @{r.r:g}",
                                                   total=r.n, unit="trials")
                      for b in study.info.plan.brackets for i, r in enumerate(b.rungs)}

    def run(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=8) as live:
            for ev in self.study.watch(include_progress=True):
                self.apply(ev)
                live.update(self.render())
            self.study.refresh()
            live.update(self.render())

    def apply(self, ev: Event) -> None:
        if ev.trial is not None:
            self.trials[ev.trial.id] = ev.trial
        if ev.kind != "progress":
            value = "" if ev.value is None else f" value {ev.value:.4g}"
            where = "" if ev.trial is None else (f" bracket {ev.trial.bracket} rung "
                                                 f"{ev.trial.rung} at {ev.resource:g}")
            stamp = time.strftime("%H:%M:%S", time.localtime(ev.time or time.time()))
            trial = "" if ev.trial_id is None else f" trial {ev.trial_id}"
            self.events.appendleft(f"{stamp} {ev.kind:>8}{trial}{where}{value}")
        # One GetStudy per few events at most: progress points can come by the hundred.
        if ev.kind != "progress" or time.time() - self.refreshed > 0.5:
            self.study.refresh()
            self.refreshed = time.time()

    def _finished_rung(self, t: Trial, bracket: int, i: int, r: float) -> bool:
        # A trial has finished rung i once it is past it, or at it with the rung's resource.
        return t.bracket == bracket and (t.rung > i or (t.rung == i and t.resource >= r - 1e-9
                                                        and t.state != "running"))

    def render(self) -> Any:
        info = self.study.info
        self.bars.update(self.overall, completed=info.resource_used)
        for b in info.plan.brackets:
            for i, r in enumerate(b.rungs):
                task = self.rungs.get((b.s, i))
                if task is not None:
                    done = sum(self._finished_rung(t, b.s, i, r.r) for t in self.trials.values())
                    self.bars.update(task, completed=done)
        busy = sum(t.state == "running" for t in self.trials.values())
        head = (f"[bold]{info.spec.name or info.id}[/] {info.spec.algorithm.name} | "
                f"{_best(self.study)} | workers busy {busy} | {info.trials_finished}/"
                f"{info.trials_total} trials finished | {info.cost_used:.1f} device s")
        return Group(head, self.bars.get_renderable(), "[dim]events[/]", *self.events)
