"""``auto`` (DESIGN.md, "auto"): deterministic per seed, restartable (snapshot + replay gives
the live answers), its bracket rule on constructed problems, its plan and decision log, the
``mfkde`` sampler's pieces, and the default algorithm of a spec that names none."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hpod.server.algorithms import Context, Resource, SearchSpace, SettingsError, build
from hpod.server.algorithms.mfkde import agreement_with_top, level_trust, spearman
from hpod.server.algorithms.space import Categorical, Float
from hpod.server.simulator import Simulator, study_config
from test_persist import drive, replay_from_snapshot

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))
BENCH = Path(__file__).resolve().parent.parent / "bench" / "mf_suite.py"


@dataclass
class Ranked:
    """value = f(x) at R; below R the ranking is f's (``sign`` 1) or reversed (``sign`` -1)."""

    sign: float
    name: str = "ranked"
    min_resource: float = 1.0
    max_resource: float = 27.0
    eta: int = 3
    optimum: float | None = 0.0
    space: list[dict[str, Any]] = field(default_factory=lambda: [
        {"name": "x", "type": "float", "low": 0.0, "high": 1.0},
        {"name": "y", "type": "float", "low": 0.0, "high": 1.0}])

    def evaluate(self, config: dict[str, Any], resource: float) -> float:
        f = (config["x"] - 0.3) ** 2 + (config["y"] - 0.6) ** 2
        if resource >= self.max_resource:
            return f
        return 1.0 + self.sign * f  # every level below R ranks as f does, or backwards

    def cost(self, config: dict[str, Any], resource: float) -> float:
        return float(resource)


def run(problem: Any, seed: int, budget_r: float = 25.0, settings: dict | None = None
        ) -> tuple[Simulator, Any]:
    config = study_config(problem, "auto", 2000, seed, settings or {}, None, None, None)
    sim = Simulator(problem, config, 1, budget_r * problem.max_resource)
    sim.run()
    return sim, sim.engine.algorithm


def test_deterministic_per_seed_in_the_simulator() -> None:
    a_sim, a = run(Ranked(1.0), seed=3)
    b_sim, b = run(Ranked(1.0), seed=3)
    _, c = run(Ranked(1.0), seed=4)
    assert a_sim.trace == b_sim.trace
    assert a.decision_log() == b.decision_log()
    assert json.dumps(a.state()) == json.dumps(b.state())
    assert [t.config for t in a.trials.values()] != [t.config for t in c.trials.values()]


def test_snapshot_plus_replay_gives_the_live_answers() -> None:
    def fresh() -> Any:
        return build("auto", Context(SPACE, Resource(27, 1, 3), 5, {}, 200))

    live, log = fresh(), []
    drive(live, random.Random(7), 250, log)
    restored = replay_from_snapshot(live, fresh, log, random.Random(8), 250)
    assert restored.decision_log() == live.decision_log()


def test_trust_reads_whole_curves_and_an_older_snapshot_restores() -> None:
    _, alg = run(Ranked(-1.0), seed=2)
    rungs = alg._rung_values()
    for level, curve in zip(alg.levels, alg.curves, strict=True):
        assert rungs[level].items() <= curve.items()  # the rungs' values, and more
    # Trials that started above level 1 reported there on the way: more pairs than rungs give.
    assert len(alg.curves[0]) > len(rungs[1.0])
    old = json.loads(json.dumps(alg.state()))
    old["version"] = 1
    del old["curves"]
    again = build("auto", Context(SPACE, Resource(27, 1, 3), 2, {}, 2000))
    again.restore(old)
    assert [dict(c) for c in again.curves] == [rungs[lv] for lv in alg.levels]


def test_a_study_saved_before_the_grouping_keeps_its_ranking() -> None:
    _, alg = run(Ranked(1.0), seed=2)
    assert alg.radius == 0.075
    saved = json.loads(json.dumps(alg.state()))
    old = {k: v for k, v in saved.items() if k != "radius"} | {"version": 2}
    again = build("auto", Context(SPACE, Resource(27, 1, 3), 2, {}, 2000))
    again.restore(old)
    assert again.radius == 0.0  # the rule its promotions followed, saved from now on
    later = build("auto", Context(SPACE, Resource(27, 1, 3), 2, {}, 2000))
    later.restore(json.loads(json.dumps(again.state())))
    assert later.radius == 0.0
    current = build("auto", Context(SPACE, Resource(27, 1, 3), 2, {}, 2000))
    current.restore(saved)
    assert current.radius == 0.075 and current.state() == alg.state()


def test_correlated_low_levels_send_trials_to_the_cheapest_bracket() -> None:
    _, alg = run(Ranked(1.0), seed=0)
    report = alg.fidelity_report()
    assert all(t["rho"] == pytest.approx(1.0) for t in report["trust"])
    weights = report["bracket_weights"]
    assert weights[0] > 0.9  # aggressive early stopping
    late = [d["bracket"] for d in alg.decision_log()[-20:]]
    assert late.count(0) >= 15
    last = alg.decision_log()[-1]
    assert "rho=+1.00" in last["why"]
    assert f"probability {alg.weights(alg.decisions[-1][2])[last['bracket']]:.2f}" in last["why"]


def test_anti_correlated_low_levels_send_trials_to_the_top_bracket() -> None:
    _, alg = run(Ranked(-1.0), seed=0)
    trust = {t["resource"]: t["rho"] for t in alg.fidelity_report()["trust"]}
    assert trust[1.0] == pytest.approx(-1.0)
    weights = alg.fidelity_report()["bracket_weights"]
    # Levels 1 and 3 rank backwards, level 9 too (against R): only the last bracket is left.
    assert weights[-1] > 0.9 and weights[0] < 0.05
    late = [d["bracket"] for d in alg.decision_log()[-10:]]
    assert late.count(alg.n_brackets - 1) >= 7


def test_the_rule_on_given_correlations() -> None:
    alg = build("auto", Context(SPACE, Resource(81, 1, 3), 0, {"explore": 0.0}, 100))
    assert alg.n_brackets == 5
    # Level 9 trusted, the two below misleading: bracket 2 takes what 0 and 1 gave up, the
    # brackets above keep the share level 9's imperfection leaves them.
    w = alg.weights([-0.5, 0.1, 0.9, 1.0, 1.0])
    assert w[0] == 0.0 and w[1] < 0.05 and w[2] == max(w)
    assert w[3] > 0.0 and w[4] == 0.0  # level 27 trusted fully: nothing above it
    unknown = alg.weights([None] * 5)
    assert unknown[0] > unknown[1] > unknown[2] > 0.0  # the prior: half trust everywhere


def test_a_bracket_is_only_as_trusted_as_every_rung_it_passes() -> None:
    alg = build("auto", Context(SPACE, Resource(81, 1, 3), 0, {"explore": 0.0}, 100))
    # Level 1 ranks as R does, level 3 backwards: bracket 0 promotes from level 3 too, so it
    # gets nothing; bracket 2 (levels 9 and 27, both trusted) takes the budget.
    w = alg.weights([1.0, -0.8, 0.9, 1.0, 1.0])
    assert w[0] == 0.0 and w[1] == 0.0 and w[2] == max(w)
    # An unknown level above the start does not discount it: only evidence does.
    assert alg.bracket_trust([1.0, None, None, None, None]) == [1.0, 0.5, 0.5, 0.5, 1.0]
    plain = build("auto", Context(SPACE, Resource(81, 1, 3), 0, {"explore": 0.0,
                                                                  "chain": False}, 100))
    assert plain.weights([1.0, -0.8, 0.9, 1.0, 1.0])[0] > 0.9  # the start level alone


@dataclass
class MidMisleads(Ranked):
    """Level 1 ranks as R does; levels 3 and 9 rank backwards."""

    def evaluate(self, config: dict[str, Any], resource: float) -> float:
        f = (config["x"] - 0.3) ** 2 + (config["y"] - 0.6) ** 2
        if resource >= self.max_resource or resource < 3:
            return f + (0.0 if resource >= self.max_resource else 1.0)
        return 2.0 - f


def test_a_misleading_middle_rung_moves_trials_past_it_in_the_simulator() -> None:
    _, alg = run(MidMisleads(1.0), seed=0)
    trust = {t["resource"]: t["rho"] for t in alg.fidelity_report()["trust"]}
    agree = {t["resource"]: t["agreement"] for t in alg.fidelity_report()["trust"]}
    assert trust[1.0] == pytest.approx(1.0) and agree[1.0] == pytest.approx(1.0)
    assert agree[3.0] == pytest.approx(-1.0) and agree[9.0] == pytest.approx(-1.0)
    # Once every level's agreement is known, the top bracket (past levels 3 and 9) gets
    # 1 - explore + explore / brackets of the draws.
    known = [b for _, b, rhos in alg.decisions if None not in rhos[:-1]]
    assert len(known) >= 10
    assert known.count(alg.n_brackets - 1) >= 0.8 * len(known), known


def test_agreement_with_the_top_multiplies_along_the_chain() -> None:
    # (rho, partner, pairs) per level; R = 27.
    trust = {1.0: (-1.0, 3.0, 6), 3.0: (-0.5, 9.0, 6), 9.0: (0.8, 27.0, 9)}
    agree = agreement_with_top(trust, 27.0)
    assert agree[9.0] == 0.8 and agree[3.0] == pytest.approx(-0.4)
    assert agree[1.0] == pytest.approx(0.4)  # backwards against a level that is backwards
    assert agreement_with_top({1.0: (0.7, 3.0, 5)}, 27.0) == {1.0: 0.7}  # partner unknown


def test_plan_says_what_it_will_do() -> None:
    alg = build("auto", Context(SPACE, Resource(81, 1, 3), 0, {}, 100))
    plan = alg.plan()
    text = " ".join(plan.notes)
    assert "rank agreement with R" in text and "current bracket weights" in text
    assert "within 0.075 of a better one" in text
    assert len(plan.brackets) == 5


@pytest.mark.parametrize(("settings", "field_name"), [
    ({"explore": 1.5}, "algorithm.settings.explore"),
    ({"prior_trust": -0.1}, "algorithm.settings.prior_trust"),
    ({"mode": "stopping"}, "algorithm.settings.mode"),
    ({"sampler": "nope"}, "algorithm.settings.sampler"),
    ({"duplicate_radius": 2}, "algorithm.settings.duplicate_radius"),
])
def test_bad_settings_are_named(settings: dict[str, Any], field_name: str) -> None:
    with pytest.raises(SettingsError) as err:
        build("auto", Context(SPACE, Resource(27, 1, 3), 0, settings, 10))
    assert err.value.field == field_name


def test_auto_needs_a_stop() -> None:
    with pytest.raises(SettingsError, match="max_trials"):
        build("auto", Context(SPACE, Resource(27, 1, 3), 0, {}, None))


def test_spearman_and_level_trust() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(
        0.8660254)  # scipy.stats.spearmanr, ties averaged
    by_level = {1.0: {t: float(t) for t in range(10)}, 3.0: {t: -float(t) for t in range(6)},
                9.0: {t: float(t) for t in range(3)}}
    trust = level_trust(by_level, min_pairs=5)
    assert trust[1.0] == (pytest.approx(-1.0), 3.0, 6)  # level 9 shares only 3: not it
    assert 3.0 not in trust
    # Read from the latest trials to reach the higher level, at most max_pairs of them (a
    # bounded cost): the early ones ranked backwards, the latest in order.
    by_level = {1.0: {t: float(t) if t >= 10 else -float(t) for t in range(20)},
                3.0: {t: float(t) for t in range(20)}}
    everything = spearman(np.array(list(by_level[1.0].values())),
                          np.array(list(by_level[3.0].values())))
    assert everything < 0.8 and level_trust(by_level, min_pairs=5)[1.0] == (
        pytest.approx(everything), 3.0, 20)
    assert level_trust(by_level, min_pairs=5, max_pairs=10)[1.0] == (pytest.approx(1.0), 3.0,
                                                                      10)


def test_mfkde_handles_categoricals_and_restores() -> None:
    space = SearchSpace((Float("lr", 1e-4, 1.0, log=True), Categorical("act", ("a", "b", "c"))))
    ctx = Context(space, Resource(9, 1, 3), 1, {"sampler": "mfkde"}, 300)
    alg = build("asha", ctx)
    live, log = alg, []
    drive(live, random.Random(1), 200, log)
    for trial in live.trials.values():
        assert trial.config["act"] in ("a", "b", "c") and 1e-4 <= trial.config["lr"] <= 1.0
    assert live.sampler.last_fit.get("model") is not None
    replay_from_snapshot(live, lambda: build("asha", ctx), log, random.Random(2), 100)


def test_default_algorithm_is_auto() -> None:
    from hpod.server.service.convert import config_from_spec
    from hpod.v1 import hpod_pb2 as pb

    spec = pb.StudySpec(name="s", max_trials=10)
    spec.resource.max_resource = 27
    p = spec.search_space.add()
    p.name, p.float_range.low, p.float_range.high = "x", 0.0, 1.0
    assert config_from_spec(spec).algorithm == "auto"


def test_quick_suite_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--jobs", "1",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=True)
    res = json.loads((tmp_path / "mf_suite-quick.json").read_text())
    assert set(res["problems"]) == {"ranks-well", "misleading"}
    for block in res["problems"].values():
        assert "hpod-auto" in block["rows"]
        for quartiles in block["rows"]["hpod-auto"].values():
            assert all(math.isfinite(q) for q in quartiles)
    assert "| ranks-well | hpod-auto |" in out.stdout


def test_cqr_refits_on_a_growth_schedule_and_restores_the_same_model() -> None:
    from hpod.server.algorithms.base import SuggestContext, rng_for
    from hpod.server.algorithms.cqr import CQRSampler

    ctx = Context(SPACE, Resource(9, 1, 3), 2, {"cqr": {"n_estimators": 5,
                                                        "num_candidates": 50}}, None)

    def feed(s: CQRSampler, lo: int, hi: int, fits: list[int]) -> list[dict[str, Any]]:
        out = []
        for t in range(lo, hi):
            config = s.suggest(SuggestContext(t))
            out.append(config)
            s.observe(t, config, 9.0, (config["x"] - 0.3) ** 2 + config["y"])
            fits.append(int(s._fit_data["version"]) if s._fit_data else -1)
        return out

    live, fits = CQRSampler(ctx, rng_for(2, 0)), []
    feed(live, 0, 90, fits)
    saved = json.loads(json.dumps(live.state()))
    later = feed(live, 90, 120, fits)
    refits_late = len(set(fits[70:]))
    assert refits_late < 50 / 2  # from 64 rows on: about every 10 % of new data, not each
    restored = CQRSampler(ctx, rng_for(2, 0))
    restored.restore(saved)
    assert feed(restored, 90, 120, []) == later


@pytest.mark.parametrize("cut", [30, 150])
def test_engine_snapshot_plus_log_tail_replays_auto(cut: int) -> None:
    from hpod.server.engine import StudyEngine
    from hpod.server.study import StudyConfig
    from test_engine import SPACE as ENGINE_SPACE
    from test_engine import drive as drive_engine

    def config() -> StudyConfig:
        return StudyConfig(ENGINE_SPACE, Resource(9, 1, 3), "auto", seed=4, max_trials=40)

    live, log = StudyEngine("s", config()), []
    drive_engine(live, log)
    assert live.state == "completed"
    replayed = StudyEngine("s", config())
    for inp in log[:cut]:
        replayed.apply(inp)
    snap = json.loads(json.dumps(replayed.state_dict(), allow_nan=False))
    restored = StudyEngine.from_state("s", config(), snap)
    for inp in log[cut:]:
        restored.apply(json.loads(json.dumps(inp)))
    assert restored.state_dict() == live.state_dict()


@pytest.mark.slow
def test_same_proposals_across_a_server_restart(tmp_path: Path, monkeypatch: Any) -> None:
    import test_cqr_service as svc
    from hpod.client.local import LocalCluster

    def spec(algorithm: str, seed: int = 11) -> dict[str, Any]:
        return {"name": "det-auto", "resource": {"max_resource": 9, "min_resource": 1,
                                                  "eta": 3},
                "seed": seed, "max_trials": 30, "search_space": svc.SPACE}  # no algorithm

    monkeypatch.setitem(svc.MAX_TRIALS, "auto", 30)
    monkeypatch.setattr(svc, "ask_tell_spec", spec)
    with LocalCluster(workers=0, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=30.0) as c:
        restarted = svc.drive(c, c.client(), "auto", restart_at_job=25)
        with c.client() as client:
            first = svc.drive(c, client, "auto")
    assert restarted == first


def test_study_show_gives_the_decisions_through_a_real_server(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    import test_cqr_service as svc
    from hpod.client.local import LocalCluster

    def spec(algorithm: str, seed: int = 5) -> dict[str, Any]:
        return {"name": "show-auto", "resource": {"name": "epoch", "max_resource": 9,
                                                   "min_resource": 1, "eta": 3},
                "seed": seed, "max_trials": 20, "search_space": svc.SPACE}  # no algorithm

    monkeypatch.setattr(svc, "ask_tell_spec", spec)
    cli = [sys.executable, "-m", "hpod.client.cli"]
    with LocalCluster(workers=0, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=30.0) as c:
        with c.client() as client:
            svc.drive(c, client, "auto")
            (study,) = [s for s in client.list_studies() if s.spec.name == "show-auto"]
            assert not study.HasField("fidelity")  # a listing leaves the log out
            sid = study.id
        shown = subprocess.run([*cli, "study", "show", sid, "--json", "--address", c.address],
                               capture_output=True, text=True, timeout=120, check=True)
        human = subprocess.run([*cli, "study", "show", sid, "--address", c.address],
                               capture_output=True, text=True, timeout=120, check=True).stdout
    doc = json.loads(shown.stdout)
    fid, trials = doc["fidelity"], {t["id"]: t for t in doc["trials"]}
    assert doc["study"]["algorithm"] == "auto" and len(trials) == 20
    assert [d["trial"] for d in fid["decisions"]] == sorted(trials)
    for d in fid["decisions"]:  # each trial ran in the bracket the log says, from its start
        assert trials[d["trial"]]["bracket"] == d["bracket"]
        assert d["start_resource"] == fid["bracket_start"][d["bracket"]] and d["why"]
    assert fid["bracket_start"] == [1.0, 3.0, 9.0]
    assert math.isclose(sum(fid["bracket_weights"]), 1.0, abs_tol=1e-3)
    for t in fid["trust"]:
        assert -1.0 <= t["rho"] <= 1.0 and t["against"] > t["resource"] and t["pairs"] >= 5
    assert "fidelity trust: " in human and "bracket weights now: start 1: " in human
    assert "bracket decisions (latest 10 of 20" in human


def _suite() -> Any:
    import importlib.util

    if "mf_suite_under_test" not in sys.modules:
        spec = importlib.util.spec_from_file_location("mf_suite_under_test", BENCH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["mf_suite_under_test"]


def test_the_suite_reuses_saved_peer_runs_but_runs_hpod_methods_afresh() -> None:
    suite = _suite()
    saved = [suite.Run("ranks-well", "peer-x", 0, [(100, -3.0)]),
             suite.Run("ranks-well", "hpod-random", 0, [(1, -3.3)])]  # stale: run again
    res = suite.run_suite(["ranks-well"], ["random"], [], 1, 2.0, 1, saved)
    assert res["setup"]["reused_runs"] == 1
    rows = res["problems"]["ranks-well"]["rows"]
    assert set(rows) == {"peer-x", "hpod-random"}
    fresh = [r for r in res["runs"] if r["method"] == "hpod-random"]
    assert len(fresh) == 1 and fresh[0]["curve"] != [(1, -3.3)]
    # What the model-based rows depend on besides the code is recorded with them.
    import numpy

    env = res["setup"]["environment"]
    assert env["numpy"] == numpy.__version__ and env["python"] and "blas" in env


def test_the_suite_passes_its_settings_to_hpods_algorithms() -> None:
    # --settings reaches the algorithm: a radius auto refuses fails every run, and says why.
    suite = _suite()
    res = suite.run_suite(["ranks-well"], ["auto"], [], 1, 1.0, 1, None,
                          {"duplicate_radius": 1.5})
    assert res["setup"]["hpod_settings"] == {"duplicate_radius": 1.5}
    assert len(res["setup"]["errors"]) == 1 and "duplicate_radius" in res["setup"]["errors"][0]
    with pytest.raises(SystemExit):
        suite.build_parser().parse_args(["--settings", "[0.1]"])
    with pytest.raises(SettingsError, match="duplicate_radius"):  # --cost takes them too
        suite.suggestion_cost("auto", trials=5, settings={"duplicate_radius": 1.5})


@pytest.mark.parametrize("method", ["asha", "random"])
def test_the_cost_measurement_counts_every_new_trial_of_any_algorithm(method: str) -> None:
    # A scheduler promotes between new trials; a single-fidelity algorithm only starts them:
    # both are measured through the algorithm interface, one figure per trial started.
    cost = _suite().suggestion_cost(method, trials=30)
    assert cost["trials"] == 30
    assert all(math.isfinite(v) and v >= 0 for v in cost.values())
