"""What the ``hpod`` commands print: one JSON shape per object (documented in
``docs/cli-json.md``) and the human tables, so every command says the same thing the same way.

JSON is snake_case, numbers are numbers (never int64-as-string), absent values are ``null``
and every documented field is always present, zero or not.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpod.v1 import hpod_pb2 as pb

    from .sdk import Trial

STUDY_STATES = {0: "unspecified", 1: "active", 2: "completed", 3: "stopped", 4: "failed",
                5: "quarantined"}
ENDED_BADLY = ("failed", "quarantined")

# Exit codes of every `hpod` command (docs/cli-json.md repeats them).
EXIT_OK = 0
EXIT_BAD_OUTCOME = 1   # the study failed or was quarantined; `best` found no result
EXIT_USAGE = 2         # bad arguments, a bad spec file, or the server refused the request
EXIT_UNREACHABLE = 3   # no server answered (or the call timed out)
EXIT_DENIED = 4        # the server refused the credentials
EXIT_SERVER = 5        # the server failed (INTERNAL, UNKNOWN, ...)
EXIT_INTERRUPTED = 130


def exit_code_for(status_name: str) -> int:
    """The exit code for a gRPC status code name."""
    if status_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return EXIT_UNREACHABLE
    if status_name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return EXIT_DENIED
    if status_name in ("INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS",
                       "FAILED_PRECONDITION", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED"):
        return EXIT_USAGE
    return EXIT_SERVER


def study_state(info: pb.Study) -> str:
    return STUDY_STATES.get(info.state, str(info.state))


def _time(ts: Any) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return dt.datetime.fromtimestamp(ts.ToNanoseconds() / 1e9, dt.timezone.utc).isoformat()


def trial_json(t: Trial) -> dict[str, Any]:
    return {"id": t.id, "state": t.state, "value": t.value, "resource": t.resource,
            "bracket": t.bracket, "rung": t.rung, "cost": t.cost, "config": t.config,
            "error": t.error or None, "lost_jobs": t.lost_jobs, "segments": t.segments}


TRIAL_FIELDS = ("id", "state", "value", "resource", "bracket", "rung", "cost", "config", "error",
                "lost_jobs", "segments")


def study_json(info: pb.Study, best: Trial | None = None) -> dict[str, Any]:
    spec = info.spec
    direction = "maximize" if spec.objective.direction == 2 else "minimize"
    return {
        "id": info.id, "name": spec.name or None, "state": study_state(info),
        "error": info.error or None, "algorithm": spec.algorithm.name,
        "trainer": spec.trainer or None, "metric": spec.objective.metric or None,
        "direction": direction, "resource_name": spec.resource.name or None,
        "max_resource": spec.resource.max_resource, "trials_total": info.trials_total,
        "trials_running": info.trials_running, "trials_finished": info.trials_finished,
        "resource_used": info.resource_used,
        "resource_planned": info.plan.incremental_resource or None,
        "cost_used": info.cost_used, "created": _time(info.create_time),
        "best": trial_json(best) if best is not None else None,
    }


def fidelity_json(info: pb.Study) -> dict[str, Any] | None:
    """auto's fidelity policy and decisions (null for algorithms that keep none)."""
    if not info.HasField("fidelity"):
        return None
    f = info.fidelity
    return {
        "trust": [{"resource": t.resource, "rho": t.rho, "against": t.against,
                   "pairs": t.pairs, "agreement": t.agreement} for t in f.trust],
        "bracket_start": list(f.bracket_start), "bracket_weights": list(f.bracket_weights),
        "decisions": [{"trial": d.trial_id, "bracket": d.bracket,
                       "start_resource": d.start_resource, "why": d.why}
                      for d in f.decisions],
    }


def dump(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def fmt_value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def fmt_config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in config.items())


def headline(error: str) -> str:
    """A trial error's message without the traceback workers append to it."""
    head = error.split("Traceback (most recent call last)", 1)[0]
    return " ".join(head.split()) or " ".join(error.split())


def one_line(text: str, width: int = 100) -> str:
    """An error message as one line, cut to ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> None:
    """A table with headers; rich in a terminal, plain aligned text (never wrapped) in a pipe."""
    rows = [[str(c) for c in r] for r in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title or None, title_justify="left")
        for h in headers:
            t.add_column(h, overflow="fold")
        for r in rows:
            t.add_row(*r)
        Console().print(t)
        return
    if title:
        print(title)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for r in [list(headers), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def sort_trials(trials: list[Trial], maximize: bool) -> list[Trial]:
    """Furthest-trained first (a value at 3 epochs does not compete with one at 27), then by
    value; trials without a value (failed, queued) last, by id."""
    def key(t: Trial) -> tuple:
        if t.value is None:
            return (1, 0.0, 0.0, t.id)
        return (0, -t.resource, -t.value if maximize else t.value, t.id)

    return sorted(trials, key=key)


def incumbent(trials: Sequence[Trial], maximize: bool) -> Trial | None:
    """The best value among the furthest-trained trials that have one: what a stopped study
    offers when its algorithm's rule (usually: best at the maximum resource) finds nothing."""
    ranked = sort_trials([t for t in trials if t.value is not None], maximize)
    return ranked[0] if ranked else None


def all_failed(trials: Sequence[Trial]) -> bool:
    """Every trial that ended, ended failed or lost (and at least one did)."""
    ended = [t for t in trials if t.state in ("completed", "stopped", "failed", "lost")]
    return bool(ended) and all(t.state in ("failed", "lost") for t in ended)


def failure_summary(trials: Sequence[Trial]) -> str | None:
    """``N of M trials failed; first error: ...`` or None when none failed."""
    failed = sorted((t for t in trials if t.state in ("failed", "lost")), key=lambda t: t.id)
    if not failed:
        return None
    first = next((t for t in failed if t.error), failed[0])
    why = one_line(headline(first.error), 300) if first.error else "no reason recorded"
    return (f"{len(failed)} of {len(trials)} trials failed; first error (trial {first.id}): "
            f"{why}")
