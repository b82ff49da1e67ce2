"""The peer harness of ``hpod bench compare`` and ``bench/cqr.py`` (issues 5 and 7): the shared
simulated-clock loop, the JSON-lines runner protocol, and clean skips when Syne Tune or Ray Tune
is not installed. The peers themselves are not installed in CI; the last test runs them only
where ``HPOD_SYNE_PYTHON`` / ``HPOD_RAY_PYTHON`` name an interpreter that has them (or this
interpreter has them)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def driver() -> ModuleType:
    return _load("hpod_bench_peers_driver", BENCH / "peers" / "driver.py")


class Linear:
    """value = x + 1/r, cost 10 s per unit: easy to follow by hand."""

    name = "linear"
    space = [{"name": "x", "type": "float", "low": 0.0, "high": 1.0, "log": False}]
    min_resource, max_resource, eta, optimum = 1.0, 3.0, 3, 0.0

    def evaluate(self, config: dict[str, Any], resource: float) -> float:
        return float(config["x"]) + 1.0 / resource

    def cost(self, config: dict[str, Any], resource: float) -> float:
        return 10.0 * resource


class Scripted:
    """Trial 0 pauses at r = 1 and is resumed as soon as trial 1 stops; the rest run to R."""

    def __init__(self) -> None:
        self.next, self.calls = 0, []
        self.resumable = False

    def suggest(self) -> tuple[int, dict[str, Any], bool] | None:
        if self.resumable:
            self.resumable = False
            self.calls.append(("resume", 0))
            return 0, {}, True
        key = self.next
        self.next += 1
        self.calls.append(("new", key))
        return key, {"x": 0.5 if key == 0 else 0.9}, False

    def result(self, key: int, resource: float, value: float, last: bool) -> str:
        self.calls.append(("result", key, resource, last))
        if key == 0 and resource == 1:
            return "pause"
        if key == 1 and resource == 1:
            self.resumable = True
            return "stop"
        return "continue"


def test_loop_pauses_resumes_and_spends_the_budget() -> None:
    drv = driver()
    sched, stats = Scripted(), {}
    trace = drv.run_loop(Linear(), sched, 2, 6.0, 3, stats)
    # t=10: trial 0 pauses at r=1 (new trial 2 starts), trial 1 stops (trial 0 resumes from
    # its checkpoint: r=2 at t=20, r=3 at t=30); trial 2 reports r=1 at 20, r=2 at 30. Ties in
    # time go in the order the points were scheduled: trial 2's before trial 0's.
    assert sched.calls[:4] == [("new", 0), ("new", 1), ("result", 0, 1, False), ("new", 2)]
    assert ("resume", 0) in sched.calls
    assert ("result", 0, 3, True) in sched.calls
    assert stats == {"trials": 3, "resumes": 1, "consumed": 6.0, "simulated_seconds": 30.0}
    assert trace[0] == (10.0, 1.0, 1.5)
    assert trace[-1] == (30.0, 6.0, 0.5 + 1 / 3)  # trial 0 at R, the budget's last unit


def test_runner_protocol_end_to_end(tmp_path: Path) -> None:
    """A runner built on runner_common (a stand-in peer: random search to R) answers the
    driver through a real subprocess, and reports a failing request without dying."""
    script = tmp_path / "fake_runner.py"
    script.write_text(f"""
import random, sys
sys.path.insert(0, {str(BENCH / 'peers')!r})
from runner_common import serve

class Session:
    def __init__(self, req):
        self.rng = random.Random(req["seed"])
        self.n = 0
    def suggest(self):
        self.n += 1
        print("peers may print; it must not reach the protocol")
        return {{"trial": self.n, "config": {{"x": self.rng.random()}}, "resume": False}}
    def result(self, trial, r, value, last):
        if value < 0:
            raise ValueError("negative")
        return "continue"

sys.exit(serve("fake", "1.0", ["random"], Session))
""")
    drv = driver()
    proc = drv.PeerProcess("fake", sys.executable, script)
    try:
        traces = []
        for _ in range(2):
            sched = drv.RemoteScheduler(proc, "random", Linear.space, 1, 3, 3, seed=4)
            traces.append(drv.run_loop(Linear(), sched, 3, 12.0, 3))
        assert traces[0] == traces[1] and traces[0][-1][1] <= 12.0
        with pytest.raises(drv.PeerError, match="negative"):
            proc.call({"op": "result", "trial": 1, "resource": 1, "value": -1.0, "last": False})
        with pytest.raises(drv.PeerError, match="unknown method"):
            proc.call({"op": "init", "method": "nope", "seed": 0})
        assert proc.call({"op": "suggest"})["trial"] >= 1  # still serving
    finally:
        proc.close()


def test_missing_peers_are_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    compare = _load("bench_compare_peers", BENCH / "compare.py")
    for var in ("HPOD_SYNE_PYTHON", "HPOD_RAY_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    todo, skipped = compare.methods(["random"], ["syne-tune", "ray-tune", "syne-asha-cqr",
                                                 "ray-nope"])
    assert "ray-nope" in skipped and "unknown peer" in skipped["ray-nope"]
    for peer, package in (("syne-tune", "syne_tune"), ("ray-tune", "ray")):
        if importlib.util.find_spec(package) is None:
            assert skipped[peer].startswith("not installed"), skipped[peer]
    todo, skipped = compare.methods([], ["syne-tune"], {"syne-tune": "/no/such/python"})
    assert "not an executable interpreter" in skipped["syne-tune"] and not todo


PEER_METHODS = [("syne-tune", "HPOD_SYNE_PYTHON", m)
                for m in ("asha", "hyperband", "asha-cqr", "cqr", "bohb", "bohb-hyperband")]
PEER_METHODS += [("ray-tune", "HPOD_RAY_PYTHON", m) for m in ("asha", "hyperband")]
PEER_METHODS += [("dehb", "HPOD_DEHB_PYTHON", "dehb")]


def test_dehb_unit_cube_maps_onto_hpods_space() -> None:
    runner = _load("bench_dehb_runner", BENCH / "peers" / "dehb_runner.py")
    space = [{"name": "lr", "type": "float", "low": 1e-4, "high": 1e-1, "log": True},
             {"name": "width", "type": "int", "low": 8, "high": 64},
             {"name": "act", "type": "categorical", "choices": ["relu", "tanh", "gelu"]}]
    low = runner.decode(space, [0.0, 0.0, 0.0])
    high = runner.decode(space, [1.0, 1.0, 1.0])
    assert low == {"lr": pytest.approx(1e-4), "width": 8, "act": "relu"}
    assert high == {"lr": pytest.approx(1e-1), "width": 64, "act": "gelu"}
    assert runner.decode(space, [0.5, 0.5, 0.5]) == {"lr": pytest.approx(10 ** -2.5),
                                                     "width": 36, "act": "tanh"}


@pytest.mark.parametrize(("peer", "var", "method"), PEER_METHODS)
def test_installed_peer_runs_deterministically(peer: str, var: str, method: str) -> None:
    from hpod.server.problems import get_problem

    drv = driver()
    try:
        python = drv.interpreter(peer, os.environ.get(var))
    except drv.PeerUnavailable as exc:
        pytest.skip(f"{peer}: {exc}")
    problem = get_problem("branin-mf")
    try:
        info = drv.probe_cached(peer, python)
        if method not in info["methods"]:
            pytest.skip(info["unavailable"].get(method, "not offered"))
        runs = [drv.run_peer(peer, python, method, problem, 3, 1, 4 * 9, r_max=9)
                for _ in range(2)]
    finally:
        drv.close_all()
    assert runs[0] == runs[1] and runs[0]
    assert all(a[1] < b[1] and a[2] > b[2] for a, b in zip(runs[0], runs[0][1:], strict=False))


def test_rays_hyperband_pauses_and_resumes_trials() -> None:
    """Ray's HyperBandScheduler halves a bracket once all its trials reached the rung: the
    runner must keep trials pending as Ray's controller does, or no trial is ever paused."""
    from hpod.server.problems import get_problem

    drv = driver()
    try:
        python = drv.interpreter("ray-tune", os.environ.get("HPOD_RAY_PYTHON"))
    except drv.PeerUnavailable as exc:
        pytest.skip(f"ray-tune: {exc}")
    stats: dict[str, Any] = {}
    try:
        drv.run_peer("ray-tune", python, "hyperband", get_problem("branin-mf"), 1, 0, 10 * 81,
                     stats=stats)
    finally:
        drv.close_all()
    # 10 full trainings' worth of resource: many more trials than 10, some of them resumed.
    assert stats["trials"] > 30 and stats["resumes"] > 0, stats
