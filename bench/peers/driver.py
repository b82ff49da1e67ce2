"""Peers on hpod's simulated clock: one event loop for every peer (hpod's side).

Syne Tune and Ray Tune are heavy and pin their own dependencies, so they are not dependencies of
hpod: each lives in an interpreter of its own (a separate venv) and runs a small scheduler
server, ``bench/peers/<peer>_runner.py`` (protocol in ``runner_common.py``). The simulated
cluster stays here: :func:`run_loop` keeps ``workers`` trials running on an event heap ordered by
the problem's cost model, evaluates the problem in this process (analytic functions and real
trainers alike) at every resource unit, and asks the scheduler, local (Optuna) or remote, what to
start and whether each trial goes on. Every peer therefore sees the same problems, seeds, number
of workers, budget and clock as hpod's simulator.

Interpreters: ``--syne-python`` / ``--ray-python`` on ``bench/compare.py``'s command line, else
the environment variables ``HPOD_SYNE_PYTHON`` / ``HPOD_RAY_PYTHON`` / ``HPOD_DEHB_PYTHON``,
else this interpreter if it can import the peer. Setting one up (``bench/README.md``)::

    python -m venv /tmp/peers/syne && /tmp/peers/syne/bin/pip install 'syne-tune==0.16.0'
    python -m venv /tmp/peers/ray && /tmp/peers/ray/bin/pip install 'ray[tune]==2.60.0'
    python -m venv /tmp/peers/dehb && /tmp/peers/dehb/bin/pip install 'dehb==0.1.2'
"""

from __future__ import annotations

import heapq
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
Trace = list[tuple[float, float, float]]  # (simulated seconds, resource consumed, best so far)


@dataclass(frozen=True)
class PeerSpec:
    name: str  # as given to --peers
    prefix: str  # method names are prefix-method
    package: str  # the module the peer's interpreter must import
    runner: str  # script in bench/peers
    env: str  # environment variable naming the interpreter
    flag: str  # command-line flag naming it
    install: str  # what to pip install in its venv


PEERS = {
    "syne-tune": PeerSpec("syne-tune", "syne", "syne_tune", "syne_tune_runner.py",
                          "HPOD_SYNE_PYTHON", "--syne-python", "'syne-tune>=0.14.2'"),
    "ray-tune": PeerSpec("ray-tune", "ray", "ray", "ray_tune_runner.py", "HPOD_RAY_PYTHON",
                         "--ray-python", "'ray[tune]'"),
    "dehb": PeerSpec("dehb", "dehb", "dehb", "dehb_runner.py", "HPOD_DEHB_PYTHON",
                     "--dehb-python", "'dehb==0.1.2' (it pins numpy < 2)"),
}


class PeerUnavailable(RuntimeError):
    """The peer cannot run here; the message says why (shown as the skip reason)."""


class PeerError(RuntimeError):
    """The peer's runner failed during a run."""


def interpreter(peer: str, given: str | None = None) -> str:
    """The interpreter to run ``peer`` with: the flag's value, the environment variable, or
    this interpreter when it has the peer. Raises PeerUnavailable with the reason."""
    spec = PEERS[peer]
    path = given or os.environ.get(spec.env)
    if path:
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise PeerUnavailable(f"{path} (from {spec.flag} / {spec.env}) is not an "
                                  "executable interpreter")
        return path
    if importlib.util.find_spec(spec.package) is not None:
        return sys.executable
    raise PeerUnavailable(
        f"not installed (no {spec.flag} or {spec.env}, and this interpreter cannot import "
        f"{spec.package}; install it in a venv of its own: pip install {spec.install})")


def probe(peer: str, python: str, timeout: float = 300.0) -> dict[str, Any]:
    """Version and methods of the peer in ``python``; PeerUnavailable with the reason."""
    script = HERE / PEERS[peer].runner
    try:
        out = subprocess.run([python, str(script), "--probe"], capture_output=True, text=True,
                             timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"{python} did not answer: {exc}") from exc
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        raise PeerUnavailable(f"not usable with {python}: {why}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_PROBES: dict[tuple[str, str], dict[str, Any] | PeerUnavailable] = {}


def probe_cached(peer: str, python: str) -> dict[str, Any]:
    """:func:`probe`, once per (peer, interpreter) in this process."""
    key = (peer, python)
    if key not in _PROBES:
        try:
            _PROBES[key] = probe(peer, python)
        except PeerUnavailable as exc:
            _PROBES[key] = exc
    got = _PROBES[key]
    if isinstance(got, PeerUnavailable):
        raise got
    return got


class PeerProcess:
    """One runner process, kept for many runs (importing a peer takes seconds)."""

    def __init__(self, peer: str, python: str, script: str | Path | None = None) -> None:
        self.peer, self.python = peer, python
        self.log = tempfile.TemporaryFile(mode="w+")  # the runner's stderr
        script = script or HERE / PEERS[peer].runner
        self.proc = subprocess.Popen(
            [python, str(script)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)

    def call(self, req: Mapping[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise PeerError(f"{self.peer} runner exited ({self.proc.poll()}): "
                            f"{self._stderr_tail()}")
        resp = json.loads(line)
        if "error" in resp:
            raise PeerError(f"{self.peer}: {resp['error']}\n{resp.get('traceback', '')}")
        return resp

    def _stderr_tail(self, n: int = 20) -> str:
        self.log.flush()
        self.log.seek(0)
        return "".join(self.log.readlines()[-n:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"op": "quit"})
            except PeerError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Scheduler(Protocol):
    """What :func:`run_loop` asks. ``suggest`` returns ``(key, config, resume)`` or None when
    there is nothing to run now; ``result`` answers ``continue``, ``stop`` or ``pause``."""

    def suggest(self) -> tuple[Any, dict[str, Any], bool] | None: ...

    def result(self, key: Any, resource: float, value: float, last: bool) -> str: ...


class RemoteScheduler:
    """A peer's scheduler in its runner process, for one run."""

    def __init__(self, proc: PeerProcess, method: str, space: list[dict[str, Any]],
                 r_min: float, r_max: float, eta: int, seed: int) -> None:
        self.proc = proc
        proc.call({"op": "init", "method": method, "space": space, "min_resource": r_min,
                   "max_resource": r_max, "eta": eta, "seed": seed})

    def suggest(self) -> tuple[Any, dict[str, Any], bool] | None:
        resp = self.proc.call({"op": "suggest"})
        if resp["trial"] is None:
            return None
        return resp["trial"], resp["config"], bool(resp["resume"])

    def result(self, key: Any, resource: float, value: float, last: bool) -> str:
        return self.proc.call({"op": "result", "trial": key, "resource": resource,
                               "value": value, "last": last})["decision"]


def run_loop(problem: Any, scheduler: Scheduler, workers: int, budget: float,
             r_max: int, stats: dict[str, Any] | None = None) -> Trace:
    """``workers`` trials at a time on a simulated clock until ``budget`` resource was
    trained. A trial reports every resource unit; a unit of configuration c ends at
    ``start + cost(c, r) - cost(c, r0)`` for a job started at ``start`` from its checkpoint
    ``r0`` (0 for a new trial), as in hpod's simulator. A stopped or completed trial frees its
    worker; a paused one keeps its checkpoint for a later resume. A free worker asks for work
    at once; when the scheduler has none, it asks again after each later event. ``stats``,
    if given, receives ``trials`` (started), ``resumes``, ``consumed`` and
    ``simulated_seconds``."""
    heap: list[tuple[float, int, Any, int, float, float]] = []  # at, seq, key, r, start, base
    trials: dict[Any, tuple[dict[str, Any], int]] = {}  # key -> config, trained resource
    seq, consumed, best, idle, resumes, now = 0, 0.0, math.inf, 0, 0, 0.0
    trace: Trace = []

    def push(key: Any, r: int, start: float, base: float) -> None:
        nonlocal seq
        seq += 1
        at = start + problem.cost(trials[key][0], r) - base
        heapq.heappush(heap, (at, seq, key, r, start, base))

    def start(now: float) -> bool:
        nonlocal resumes
        got = scheduler.suggest()
        if got is None:
            return False
        key, config, resume = got
        if resume:
            resumes += 1
            config_old, done = trials[key]
            trials[key] = (config or config_old, done)
        else:
            trials[key] = (config, 0)
        done = trials[key][1]
        if done >= r_max:
            raise PeerError(f"trial {key} resumed at its maximum resource {done}")
        base = problem.cost(trials[key][0], done) if done else 0.0
        push(key, done + 1, now, base)
        return True

    for _ in range(workers):
        if not start(0.0):
            idle += 1
    while heap and consumed < budget:
        now, _, key, r, t0, base = heapq.heappop(heap)
        config = trials[key][0]
        value = float(problem.evaluate(config, r))
        consumed += 1
        trials[key] = (config, r)
        if value < best:
            best = value
            trace.append((now, consumed, value))
        decision = scheduler.result(key, r, value, r >= r_max)
        if decision == "continue" and r < r_max:
            push(key, r + 1, t0, base)
        else:
            idle += 1
        while idle and consumed < budget and start(now):
            idle -= 1
    if stats is not None:
        stats.update(trials=len(trials), resumes=resumes, consumed=consumed,
                     simulated_seconds=now)
    return trace


_PROCESSES: dict[tuple[str, str], PeerProcess] = {}


def peer_process(peer: str, python: str) -> PeerProcess:
    """A runner per (peer, interpreter) in this process, started on first use."""
    key = (peer, python)
    proc = _PROCESSES.get(key)
    if proc is None or proc.proc.poll() is not None:
        proc = _PROCESSES[key] = PeerProcess(peer, python)
    return proc


def close_all() -> None:
    while _PROCESSES:
        _PROCESSES.popitem()[1].close()


def run_peer(peer: str, python: str, method: str, problem: Any, workers: int, seed: int,
             budget: float, r_max: float | None = None,
             stats: dict[str, Any] | None = None) -> Trace:
    """One run of ``peer``'s ``method`` on ``problem``; ``r_max`` overrides the problem's
    maximum resource (the problem itself is unchanged, as in hpod's simulator)."""
    top = int(r_max or problem.max_resource)
    sched = RemoteScheduler(peer_process(peer, python), method, problem.space,
                            int(getattr(problem, "min_resource", 1)), top,
                            int(getattr(problem, "eta", 3)), seed)
    return run_loop(problem, sched, workers, budget, top, stats)
