"""Live progress of a study in the terminal (``rich``), plain lines when not a terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from .sdk import Study


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
                              f"{_best(study)}", highlight=False)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed:.0f}/{task.total:.0f} " + unit),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"study {study.id}", total=total, status="")
        for _ev in study.watch():
            info = study.refresh()
            bar.update(task, completed=info.resource_used, status=(
                f"{info.trials_running} running, {info.trials_finished}/"
                f"{info.trials_total} done, {_best(study)}"))
