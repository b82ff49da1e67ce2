"""Live progress of a study: a ``rich`` view in a terminal, plain lines in a pipe or a log.

Both show the same figures (:class:`Status`): resource used against the plan (never above
100 %: asynchronous algorithms' plans are estimates, so past the plan the total grows with the
resource used), elapsed time since the study was created, the rate in resource units per
second, an ETA from that rate, the best value so far (the algorithm's, or failing that the best
reported at any resource, which says at what resource), and the trials that failed with why.

In a terminal: one bar per bracket and rung (trials that finished the rung out of its size) and
the latest events. Piped: one unwrapped line per event of interest (a new best, a failed or lost
trial, a tenth of the plan done, the end) and a summary.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console

    from .sdk import Event, Study, Trial

FAILED = ("failed", "lost")
RATE_WINDOW = 10.0  # seconds of progress before the rate leaves out the study's start-up
REPORTS = ("progress", "paused", "completed", "stopped")  # events whose value was reported


def clock(seconds: float) -> str:
    """``1:02:03`` or ``02:03``."""
    s = int(max(0.0, seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class Best:
    value: float
    trial: int
    resource: float


class Status:
    """The figures a progress display shows, from the study's info and the events seen."""

    def __init__(self, study: Study, now: Any = time.time) -> None:
        self.study = study
        self.now = now
        self.unit = study.info.spec.resource.name or "resource"
        self.maximize = study.info.spec.objective.direction == 2
        self.best_any: Best | None = None
        self.failures: dict[int, str] = {}
        self.since: tuple[float, float] | None = None  # (time, resource used) first seen

    @property
    def info(self) -> Any:
        return self.study.info

    def see(self, ev: Event) -> tuple[bool, bool]:
        """Record an event; returns (a new best at any resource, a new failure)."""
        new_best = new_failure = False
        if ev.value is not None and ev.trial_id is not None and ev.kind in REPORTS:
            b = self.best_any
            if b is None or (ev.value > b.value if self.maximize else ev.value < b.value):
                self.best_any = Best(ev.value, ev.trial_id, ev.resource)
                new_best = True
        if ev.kind in FAILED and ev.trial_id is not None and ev.trial_id not in self.failures:
            self.failures[ev.trial_id] = ev.trial.error if ev.trial is not None else ""
            new_failure = True
        return new_best, new_failure

    def elapsed(self) -> float:
        created = self.info.create_time.ToNanoseconds() / 1e9
        return max(0.0, self.now() - created) if created else 0.0

    def total(self) -> float | None:
        """The plan's resource, or what was used when that is more (an estimate overrun)."""
        planned = self.info.plan.incremental_resource
        return max(planned, self.info.resource_used) if planned else None

    def fraction(self) -> float | None:
        total = self.total()
        return min(1.0, self.info.resource_used / total) if total else None

    def rate(self) -> float:
        """Resource per second: since the first figures this display saw, once that is long
        enough to mean something (a study's first seconds are workers starting up), else
        since the study was created."""
        used, now = self.info.resource_used, self.now()
        if self.since is None and used > 0:
            self.since = (now, used)
        if self.since is not None and now - self.since[0] >= RATE_WINDOW:
            return (used - self.since[1]) / (now - self.since[0])
        el = self.elapsed()
        return used / el if el > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the current rate; None until the rate has its window (an ETA from
        the start-up seconds would be off by an order of magnitude) or past the plan."""
        planned = self.info.plan.incremental_resource
        rate = self.rate()
        settled = self.since is not None and self.now() - self.since[0] >= RATE_WINDOW
        if not planned or rate <= 0 or not settled or self.info.resource_used >= planned:
            return None
        return (planned - self.info.resource_used) / rate

    def best_text(self) -> str:
        info = self.info
        if info.HasField("best_trial"):
            b = info.best_trial
            return f"best {b.value:.4g} (trial {b.id})"
        if self.best_any is not None:
            b = self.best_any
            return f"best so far {b.value:.4g} at {b.resource:g} {self.unit}s (trial {b.trial})"
        return "no result yet"

    def resource_text(self) -> str:
        used = self.info.resource_used
        planned = self.info.plan.incremental_resource
        if not planned:
            return f"{used:g} {self.unit}s"
        over = " (past the plan's estimate)" if used > planned else ""
        return f"{used:g}/{self.total():g} {self.unit}s {self.fraction():.0%}{over}"

    def line(self) -> str:
        """Every figure on one line."""
        info = self.info
        eta = self.eta()
        parts = [f"elapsed {clock(self.elapsed())}", self.resource_text(),
                 f"{self.rate():.3g} {self.unit}s/s",
                 f"ETA {clock(eta)}" if eta is not None else "ETA -",
                 f"{info.trials_finished}/{info.trials_total} trials finished",
                 self.best_text()]
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        return " | ".join(parts)


def watch_with_progress(study: Study, console: Console | None = None,
                        stream: TextIO | None = None) -> None:
    """Follow the study's events until it ends, showing its progress."""
    stream = stream or sys.stderr
    if console is None and not stream.isatty():
        PlainProgress(study, stream).run()
        return
    from rich.console import Console

    console = console or Console(file=stream)
    if not console.is_terminal:
        PlainProgress(study, stream).run()
        return
    LiveView(study, console).run()


class PlainProgress:
    """Piped output: one line per event of interest, never wrapped, then a summary."""

    def __init__(self, study: Study, stream: TextIO, steps: int = 10) -> None:
        self.status = Status(study)
        self.stream = stream
        self.steps = steps
        self.step_shown = -1
        self.last_best = ""
        self.headlines: dict[str, int] = {}  # error message -> trials that failed with it
        self.repeats = 3  # each distinct error is shown this many times

    def emit(self, text: str) -> None:
        print(f"[{clock(self.status.elapsed())}] {text}", file=self.stream, flush=True)

    def run(self) -> None:
        study = self.status.study
        info = study.refresh()
        self.emit(f"watching study {study.id} ({info.spec.name or 'unnamed'}): "
                  f"{self.status.line()}; Ctrl-C stops watching, not the study")
        for ev in study.watch():
            _, failure = self.status.see(ev)
            if ev.kind == "study_ended":
                break
            if failure:
                self._failure(ev)
            if ev.kind in ("paused", "completed", "stopped"):
                study.refresh()
                self._maybe_status()
        study.refresh()
        self.emit(self.summary())

    def _failure(self, ev: Event) -> None:
        from .output import headline

        why = headline(self.status.failures[ev.trial_id]) or "no reason recorded"
        seen = self.headlines.get(why, 0)
        self.headlines[why] = seen + 1
        if seen < self.repeats:
            self.emit(f"trial {ev.trial_id} {ev.kind}: {why}")
        elif seen == self.repeats:
            self.emit(f"trial {ev.trial_id} {ev.kind}: the same error again (further ones are "
                      "counted, not shown)")

    def _maybe_status(self) -> None:
        best = self.status.best_text()
        frac = self.status.fraction()
        step = int((frac or 0.0) * self.steps)
        if best != self.last_best or step > self.step_shown:
            self.last_best, self.step_shown = best, step
            self.emit(self.status.line())

    def summary(self) -> str:
        s = self.status
        info = s.info
        from .output import study_state

        state = study_state(info)
        failed = f", {len(s.failures)} failed" if s.failures else ""
        error = f": {info.error}" if info.error else ""
        if not error and s.failures and len(s.failures) == info.trials_total:
            error = " but every trial failed"
        return (f"study {info.id} {state}{error} | {info.trials_total} trials{failed} | "
                f"{info.resource_used:g} {s.unit}s in {clock(s.elapsed())} "
                f"({s.rate():.3g}/s) | {s.best_text()}")


class LiveView:
    """The rich view of ``hpod study watch``: rebuilt from the trials it tracks by event."""

    def __init__(self, study: Study, console: Console, events: int = 8) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.study = study
        self.console = console
        self.status = Status(study)
        self.unit = self.status.unit
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
        from rich.live import Live

        with Live(self.render(), console=self.console, refresh_per_second=4) as live:
            for ev in self.study.watch(include_progress=True):
                self.apply(ev)
                live.update(self.render())
            self.study.refresh()
            live.update(self.render())

    def apply(self, ev: Event) -> None:
        from .output import headline

        if ev.trial is not None:
            self.trials[ev.trial.id] = ev.trial
        self.status.see(ev)
        if ev.kind != "progress":
            value = "" if ev.value is None else f" value {ev.value:.4g}"
            where = "" if ev.trial is None else (f" bracket {ev.trial.bracket} rung "
                                                 f"{ev.trial.rung} at {ev.resource:g}")
            error = (f" {headline(ev.trial.error)[:80]}"
                     if ev.kind in FAILED and ev.trial is not None and ev.trial.error else "")
            stamp = time.strftime("%H:%M:%S", time.localtime(ev.time or time.time()))
            trial = "" if ev.trial_id is None else f" trial {ev.trial_id}"
            self.events.appendleft(f"{stamp} {ev.kind:>8}{trial}{where}{value}{error}")
        # One GetStudy per few events at most: progress points can come by the hundred.
        if ev.kind != "progress" or time.time() - self.refreshed > 0.5:
            self.study.refresh()
            self.refreshed = time.time()

    def _finished_rung(self, t: Trial, bracket: int, i: int, r: float) -> bool:
        # A trial has finished rung i once it is past it, or at it with the rung's resource.
        return t.bracket == bracket and (t.rung > i or (t.rung == i and t.resource >= r - 1e-9
                                                        and t.state != "running"))

    def render(self) -> Any:
        from rich.console import Group
        from rich.markup import escape

        info = self.study.info
        self.bars.update(self.overall, completed=info.resource_used, total=self.status.total())
        for b in info.plan.brackets:
            for i, r in enumerate(b.rungs):
                task = self.rungs.get((b.s, i))
                if task is not None:
                    done = sum(self._finished_rung(t, b.s, i, r.r) for t in self.trials.values())
                    # An asynchronous bracket's rung sizes are estimates: never show 7/6.
                    self.bars.update(task, completed=done, total=max(r.n, done))
        busy = sum(t.state == "running" for t in self.trials.values())
        head = (f"[bold]{escape(info.spec.name or info.id)}[/] {info.spec.algorithm.name} | "
                f"workers busy {busy} | {info.cost_used:.1f} device s\n"
                f"{escape(self.status.line())}")
        return Group(head, self.bars.get_renderable(), "[dim]events[/]",
                     *(escape(e) for e in self.events))
