"""A study replayed on another machine or library release keeps the trials it handed out.

A model fit is L-BFGS on floats: another BLAS kernel or numpy, scipy or torch release rounds it
differently in its last bits, and a proposal made from it can differ. The service logs each ask
with the configurations it handed out (``engine.ask_record``) and a replay keeps those. Here
the other machine is a fit runner that nudges every fitted length scale by one part in 10^12,
less than two builds of the same library differ by.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from hpod.client.spec import build_spec
from hpod.server.algorithms import offload
from hpod.server.algorithms.samplers import RandomSampler
from hpod.server.engine import StudyEngine, ask_record
from hpod.server.manager import Settings, StudyManager
from hpod.server.problems import get_problem
from hpod.server.service.convert import config_from_spec
from hpod.server.simulator import Simulator, study_config


def _nudged(fn: Callable[..., Any], *args: Any) -> Any:
    out = fn(*args)
    if fn.__name__ == "fit_hyperparameters":
        out = {**out, "lengthscale": [v * (1 + 1e-12) for v in out["lengthscale"]]}
    return out


def _live_study(algorithm: str, with_configs: bool) -> tuple[Simulator, list[dict[str, Any]]]:
    """A simulated study and its log, written as the service writes it."""
    problem = get_problem("hartmann6-mf")
    sim = Simulator(problem, study_config(problem, algorithm, 40, 3), 2)
    log: list[dict[str, Any]] = []
    apply = sim._apply

    def logged(inp: dict[str, Any]) -> Any:
        result = apply(inp)
        if inp["op"] != "ask":
            log.append(inp)
        elif result:
            log.append(ask_record(inp, result) if with_configs else dict(inp))
        return result

    sim._apply = logged  # type: ignore[method-assign]
    sim.run()
    return sim, json.loads(json.dumps(log))  # as stored: through JSON


def _replay(sim: Simulator, log: list[dict[str, Any]], elsewhere: bool
            ) -> tuple[StudyEngine, int]:
    """The study rebuilt from its log, here or on the other machine; and how many inputs it
    refused."""
    engine, refused = StudyEngine(sim.engine.study_id, sim.engine.config), 0
    offload.set_runner(_nudged if elsewhere else None)
    try:
        for inp in log:
            try:
                engine.apply(inp)
            except Exception:  # noqa: BLE001 (counted: a faithful replay refuses nothing)
                refused += 1
            engine.effects.clear()
    finally:
        offload.set_runner(None)
    return engine, refused


def _configs(engine: StudyEngine) -> dict[int, dict[str, Any]]:
    return {t: rec.config for t, rec in engine.trials.items()}


def test_without_the_logged_configurations_a_replay_elsewhere_diverges() -> None:
    # The hazard itself: an ask replayed from the request alone proposes other configurations
    # and the study's later inputs no longer fit it (what a restart after an upgrade met).
    sim, log = _live_study("auto", with_configs=False)
    engine, refused = _replay(sim, log, elsewhere=True)
    assert _configs(engine) != _configs(sim.engine) or refused > 0


def test_a_replay_elsewhere_keeps_the_configurations_handed_out() -> None:
    sim, log = _live_study("auto", with_configs=True)
    engine, refused = _replay(sim, log, elsewhere=True)
    assert engine.adopted, "the nudge changed no proposal: the test shows nothing"
    assert all(took for _, took in engine.adopted)
    assert refused == 0
    assert _configs(engine) == _configs(sim.engine)
    # The algorithm's own records agree, so its later promotions and model see the same trials.
    for tid, config in _configs(sim.engine).items():
        assert engine.algorithm.trials[tid].config == config  # type: ignore[attr-defined]
    best, live_best = engine.best_trial(), sim.engine.best_trial()
    assert best is not None and live_best is not None and best.id == live_best.id


def test_the_same_machine_replays_without_adopting_anything() -> None:
    sim, log = _live_study("auto", with_configs=True)
    engine, refused = _replay(sim, log, elsewhere=False)
    assert refused == 0 and engine.adopted == []
    assert _configs(engine) == _configs(sim.engine)


@pytest.mark.parametrize("algorithm", ["asha", "hyperband", "idhb", "random", "cqr", "carbs",
                                       "asha-carbs", "asha-cqr"])
def test_every_scheduler_takes_an_adopted_configuration(algorithm: str) -> None:
    problem = get_problem("branin-curve")
    engine = StudyEngine("s", study_config(problem, algorithm, 20, 0))
    first = engine.algorithm.next_jobs(1)[0]
    other = {name: (0.123456789 if isinstance(v, float) else v)
             for name, v in first.config.items()}
    assert engine.algorithm.adopt_config(first.trial_id, other)
    saved = json.dumps(engine.algorithm.state())
    assert "0.123456789" in saved  # its saved state holds the adopted configuration


def test_a_restarted_server_keeps_what_the_log_says_was_handed_out(redis_server, monkeypatch,
                                                                   caplog) -> None:
    """Through the service, on a real Redis: the ask is logged with its configuration, and a
    server whose algorithm now proposes something else rebuilds the study with the logged one
    (instead of quarantining it) and takes the job's result."""
    spec = {"name": "elsewhere", "objective": {"metric": "loss", "direction": "minimize"},
            "resource": {"name": "epoch", "max_resource": 9, "eta": 3},
            "algorithm": {"name": "asha"}, "seed": 5, "max_trials": 4,
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}

    async def go() -> None:
        m = StudyManager(Settings(redis_url=redis_server.url))
        await m.start()
        live = await m.create(config_from_spec(build_spec(spec)))
        sid = live.engine.study_id
        (job,) = await m.submit(sid, {"op": "ask", "free": 1, "external": True})
        _, _, tail = await m.store.load_study(sid)
        assert [i["configs"] for i in tail if i["op"] == "ask"] == [
            {str(job.trial_id): job.config}]
        await m.stop()

        # The other machine: its sampler proposes another point for the same trial.
        monkeypatch.setattr(RandomSampler, "suggest", lambda self, ctx: {"x": 0.5})
        m = StudyManager(Settings(redis_url=redis_server.url))
        await m.start()
        await m.ready()
        eng = m.studies[sid].engine
        assert eng.state == "active"
        assert eng.trials[job.trial_id].config == job.config != {"x": 0.5}
        assert eng.algorithm.trials[job.trial_id].config == job.config
        await m.submit(sid, {"op": "complete", "job_id": job.job_id, "value": 0.25,
                             "resource": 1.0})
        assert eng.trials[job.trial_id].value == 0.25
        await m.stop()

    with caplog.at_level(logging.WARNING, logger="hpod.server"):
        asyncio.run(go())
    assert any("keeps the one handed out" in r.getMessage() for r in caplog.records)
