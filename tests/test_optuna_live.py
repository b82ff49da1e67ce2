"""The server's live Optuna mirror (``hpod server --optuna-storage``).

A real server process with real workers mirrors a running study into a journal file that this
test reads with Optuna while the study runs; a server killed and restarted mid-study does not
duplicate a trial; ask/tell studies driven through a real StudyManager on a real Redis cover the
state mapping and the failure handling (a storage that fails is logged and retried).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import wait_for
from hpod.client.local import LocalCluster
from hpod.client.spec import build_spec
from hpod.server import optuna_live
from hpod.server.manager import Settings, StudyManager
from hpod.server.optuna_live import LiveMirror
from hpod.server.optuna_mirror import open_storage
from hpod.server.service.convert import config_from_spec
from optuna.trial import FrozenTrial, TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_mirror(study_id: str, storage: object) -> optuna.Study:
    """The Optuna study a mirror wrote for hpod study ``study_id`` (found by its user attribute,
    whatever its name); KeyError while there is none."""
    for s in optuna.get_all_study_summaries(storage):
        if s.user_attrs.get("hpod_study_id") == study_id:
            return optuna.load_study(study_name=s.study_name, storage=storage)
    raise KeyError(study_id)
CLI = [sys.executable, "-m", "hpod.client.cli"]


def spec(seed: int, step_seconds: float) -> dict:
    return {"name": "live-mirror", "trainer": "analytic",
            "objective": {"metric": "loss", "direction": "minimize"},
            "resource": {"name": "epoch", "max_resource": 9, "eta": 3},
            "algorithm": {"name": "hyperband"}, "seed": seed,
            "trainer_settings": {"step_seconds": step_seconds}}


def optuna_trials(storage: str, study_id: str) -> list[FrozenTrial]:
    """The mirror's Optuna trials as another process reads them ([] before it has any)."""
    try:
        study = load_mirror(study_id, open_storage(storage))
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def expected_state(hpod_state: str, resource: float, max_resource: float) -> TrialState:
    if hpod_state in ("queued", "running", "paused"):
        return TrialState.RUNNING
    if hpod_state in ("failed", "lost"):
        return TrialState.FAIL
    at_max = hpod_state == "completed" and resource >= max_resource
    return TrialState.COMPLETE if at_max else TrialState.PRUNED


def assert_mirror_matches(storage: str, study_id: str, trials: dict, best_id: int | None,
                          best_value: float | None, max_resource: float) -> None:
    """``trials``: hpod trial id -> (config, curve, state, resource, value)."""
    ostudy = load_mirror(study_id, open_storage(storage))
    twins = [ot.user_attrs["hpod_trial"] for ot in ostudy.trials]
    assert sorted(twins) == sorted(trials), "exactly one Optuna trial per hpod trial"
    for ot in ostudy.trials:
        config, curve, state, resource, value = trials[ot.user_attrs["hpod_trial"]]
        assert ot.params == config
        assert ot.intermediate_values == {int(r): v for r, v in curve}
        assert ot.state == expected_state(state, resource, max_resource)
        if ot.state in (TrialState.COMPLETE, TrialState.PRUNED):
            assert ot.value == value
        assert ot.user_attrs["hpod_state"] == state
    assert ostudy.best_trial.user_attrs["hpod_trial"] == best_id
    assert ostudy.best_value == best_value


def sdk_trials(study) -> dict:
    return {t.id: (t.config, t.curve, t.state, t.resource, t.value)
            for t in study.trials(curves=True)}


def all_mirrored(storage: str, study) -> bool:
    """Every hpod trial has a finished Optuna twin (the mirror lags by one pass)."""
    ots = optuna_trials(storage, study.id)
    n = len(study.trials(curves=False))
    return len(ots) == n and all(ot.state.is_finished() for ot in ots)


# ---------------------------------------------------------------- a real server, real workers


@pytest.fixture(scope="module")
def mirrored_cluster(tmp_path_factory) -> tuple[LocalCluster, str]:
    workdir = tmp_path_factory.mktemp("mirrored-cluster")
    journal = str(workdir / "optuna" / "hpod.journal")
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(workdir),
                      lease_seconds=3.0, server_args=("--optuna-storage", journal,
                                                      "--optuna-mirror-interval", "0.2")) as c:
        yield c, journal


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_server_mirrors_a_running_study_into_a_journal(mirrored_cluster) -> None:
    cluster, journal = mirrored_cluster
    with cluster.client() as client:
        study = client.create_study(spec(seed=5, step_seconds=0.05))
        seen_live = False
        deadline = time.time() + 120
        while time.time() < deadline and study.refresh().state == 1:
            live = [ot for ot in optuna_trials(journal, study.id)
                    if ot.state == TrialState.RUNNING and ot.intermediate_values]
            if live and study.refresh().state == 1:
                seen_live = True
                # What is there already is hpod's: the curve so far, the same parameters.
                hpod = {t.id: t for t in study.trials(curves=True)}
                for ot in live:
                    ht = hpod[ot.user_attrs["hpod_trial"]]
                    assert ot.params == ht.config
                    have = {int(r): v for r, v in ht.curve}
                    assert ot.intermediate_values.items() <= have.items()
                break
            time.sleep(0.1)
        assert seen_live, "a running trial with a curve was in the journal while the study ran"
        info = study.wait(timeout=120)
        assert info.state == 2
        wait_for(lambda: all_mirrored(journal, study), 30, "the mirror to catch up")
        best = study.best_trial()
        assert_mirror_matches(journal, study.id, sdk_trials(study), best.id, best.value, 9)
        ostudy = load_mirror(study.id, open_storage(journal))
        assert len(ostudy.trials) == info.plan.max_trials == 17
        assert ostudy.user_attrs["resource_name"] == "epoch"
        assert all(ot.user_attrs["step_times"] for ot in ostudy.trials)
        assert any(ot.user_attrs["segments"] for ot in ostudy.trials)
        # optuna.visualization works on it (its matplotlib backend: plotly is not a dependency).
        import matplotlib

        matplotlib.use("Agg")
        ax = optuna.visualization.matplotlib.plot_intermediate_values(ostudy)
        assert len(ax.get_lines()) == 17


def test_server_killed_mid_study_mirrors_each_trial_once(mirrored_cluster) -> None:
    cluster, journal = mirrored_cluster
    with cluster.client() as client:
        study = client.create_study(spec(seed=9, step_seconds=0.1))
        wait_for(lambda: len(optuna_trials(journal, study.id)) >= 4
                 and study.refresh().trials_finished >= 2, 120, "trials in the mirror")
        cluster.server.send_signal(signal.SIGKILL)  # no final flush: the restart catches up
        cluster.server.wait()
        time.sleep(1.0)  # workers keep reporting into Redis meanwhile
        cluster.start_server()
        info = study.wait(timeout=180)
        assert info.state == 2
        wait_for(lambda: all_mirrored(journal, study), 30, "the mirror to catch up")
        best = study.best_trial()
        assert_mirror_matches(journal, study.id, sdk_trials(study), best.id, best.value, 9)
        server_log = (Path(cluster.workdir) / "server.log").read_text()
        assert "mirroring studies live into Optuna storage" in server_log


def test_bad_storage_url_is_a_clear_error_at_startup(tmp_path) -> None:
    proc = subprocess.run([*CLI, "server", "--redis-url", "redis://127.0.0.1:1/0", "--port", "0",
                           "--optuna-storage", "nosuchdb://somewhere/x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--optuna-storage 'nosuchdb://somewhere/x'" in proc.stderr
    assert "use e.g. sqlite:///hpod.db" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- ask/tell, in process


def asktell_spec() -> dict:
    return {"name": "asktell-mirror", "objective": {"metric": "acc", "direction": "maximize"},
            "resource": {"name": "epoch", "max_resource": 9, "eta": 3},
            "algorithm": {"name": "hyperband"}, "seed": 3,
            "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                             "width": {"type": "int", "low": 8, "high": 256, "log": True},
                             "act": {"type": "categorical", "choices": ["relu", "tanh"]},
                             "batch": {"type": "categorical", "choices": [16, 32, 64]}}}


def accuracy(config: dict, r: float) -> float:
    return round(1.0 - 0.5 / r - 0.1 * abs(config["lr"] - 0.1) - config["width"] / 2560, 6)


async def drive(m: StudyManager, sid: str, jobs: int, fail: set[int]) -> int:
    """Run up to ``jobs`` ask/tell jobs (the trials in ``fail`` fail); returns jobs run."""
    done = 0
    while done < jobs:
        asked = await m.submit(sid, {"op": "ask", "free": 1, "external": True})
        if not asked:
            break
        job = asked[0]
        for r in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
            await m.submit(sid, {"op": "progress", "job_id": job.job_id, "resource": float(r),
                                 "value": accuracy(job.config, r)})
        if job.trial_id in fail:
            await m.submit(sid, {"op": "fail", "job_id": job.job_id, "reason": "diverged"})
        else:
            await m.submit(sid, {"op": "complete", "job_id": job.job_id,
                                 "value": accuracy(job.config, job.to_resource)})
        done += 1
    return done


def engine_trials(m: StudyManager, sid: str) -> dict:
    return {t.id: (t.config, t.curve, t.state, t.resource, t.value)
            for t in m.studies[sid].engine.trials.values()}


def test_asktell_study_mirror_maps_states_and_survives_a_restart(redis_server, tmp_path,
                                                                monkeypatch) -> None:
    journal = str(tmp_path / "asktell.journal")
    monkeypatch.setattr(optuna_live, "MAX_BATCH", 4)  # the first passes split into batches

    async def go() -> None:
        m = StudyManager(Settings(redis_url=redis_server.url))
        await m.start()
        mirror = LiveMirror(m, journal, interval=0.05)
        live = await m.create(config_from_spec(build_spec(asktell_spec())))
        sid = live.engine.study_id
        await drive(m, sid, 6, fail={2})
        await mirror.flush()
        ots = optuna_trials(journal, sid)
        assert {ot.user_attrs["hpod_trial"] for ot in ots} == set(live.engine.trials)
        assert any(ot.state == TrialState.RUNNING and ot.intermediate_values for ot in ots)
        assert [ot.state for ot in ots if ot.user_attrs["hpod_trial"] == 2] == [TrialState.FAIL]
        await mirror.stop()
        await m.stop()

        # A restarted server: a new manager recovers the study, a new mirror finds its twins.
        m = StudyManager(Settings(redis_url=redis_server.url))
        await m.start()
        await m.ready()  # studies are rebuilt in the background after start
        mirror = LiveMirror(m, journal, interval=0.05).start()
        await drive(m, sid, 1000, fail=set())
        eng = m.studies[sid].engine
        assert eng.state == "completed"
        await mirror.stop()  # the final flush writes what the last pass had not
        best = eng.best_trial()
        assert_mirror_matches(journal, sid, engine_trials(m, sid), best.id, best.value, 9)
        ostudy = load_mirror(sid, open_storage(journal))
        assert ostudy.direction == optuna.study.StudyDirection.MAXIMIZE
        assert isinstance(ostudy.best_params["width"], int)
        assert ostudy.best_params["batch"] in (16, 32, 64)
        await m.stop()

    asyncio.run(go())


def test_a_failing_storage_is_logged_and_retried(redis_server, tmp_path, caplog) -> None:
    missing = tmp_path / "not-yet"
    url = f"sqlite:///{missing / 'hpod.db'}"  # the directory appears later: down, then up
    caplog.set_level(logging.INFO, logger="hpod.server.optuna")

    async def go() -> None:
        m = StudyManager(Settings(redis_url=redis_server.url))
        await m.start()
        mirror = LiveMirror(m, url, interval=0.01)
        live = await m.create(config_from_spec(build_spec(asktell_spec())))
        sid = live.engine.study_id
        await drive(m, sid, 3, fail=set())
        await mirror.sync_once()  # cannot open the storage: logged, nothing raised
        assert "cannot be opened" in caplog.text
        missing.mkdir()
        await asyncio.sleep(0.1)
        await mirror.sync_once()
        assert "is open" in caplog.text
        assert len(optuna_trials(url, sid)) == len(live.engine.trials)

        # The storage fails mid-study: the pass logs it, the trials stay marked, and the next
        # pass after the pause writes them.
        storage = mirror.storage
        writes = ("create_new_trial", "set_trial_intermediate_value", "set_trial_user_attr")
        real = {name: getattr(storage, name) for name in writes}

        def down(*args: object, **kwargs: object) -> None:
            raise ConnectionError("database is down")

        for name in writes:
            setattr(storage, name, down)
        await drive(m, sid, 3, fail=set())
        await mirror.sync_once()
        assert f"optuna mirror of study {sid} failed" in caplog.text
        await drive(m, sid, 1, fail=set())  # the apply path does not wait for the mirror
        await mirror.sync_once()  # still down: fails again (or waits out its pause)
        for name, fn in real.items():
            setattr(storage, name, fn)
        await asyncio.sleep(0.1)
        await mirror.sync_once()
        assert "is writing again" in caplog.text
        eng = live.engine
        ots = {ot.user_attrs["hpod_trial"]: ot for ot in optuna_trials(url, sid)}
        assert set(ots) == set(eng.trials)
        for tid, t in eng.trials.items():
            assert ots[tid].intermediate_values == {int(r): v for r, v in t.curve}
        await mirror.stop()
        await m.stop()

    asyncio.run(go())


# ---------------------------------------------------------------- timeline of passed-over trials


def test_a_synchronous_trial_not_promoted_is_finished_when_its_rung_moves_on() -> None:
    """Synchronous Hyperband: once the rung above has every trial the plan promotes, a trial
    still paused below is finished (PRUNED) at once, so its Optuna timeline ends there; before
    that it stays RUNNING (it may yet be promoted). Asynchronous studies keep it RUNNING."""
    from types import SimpleNamespace

    from hpod.server.optuna_mirror import StudyMirror
    from hpod.v1 import hpod_pb2 as pb
    from optuna.storages import InMemoryStorage

    def trial(tid: int, state: str, rung: int, resource: float, value: float):
        return SimpleNamespace(id=tid, config={}, state=state, value=value, resource=resource,
                               bracket=1, rung=rung, cost=0.0, curve=[(resource, value)],
                               error="")

    def mirror(algorithm: str) -> StudyMirror:
        info = pb.Study(id="s1")
        info.spec.name = "sync"
        info.spec.algorithm.name = algorithm
        info.spec.resource.max_resource = 9
        info.spec.objective.metric = "loss"
        info.plan.brackets.add(s=1, rungs=[pb.Rung(n=3, r=3), pb.Rung(n=1, r=9)])
        return StudyMirror(InMemoryStorage(), info)

    for algorithm, expect in (("hyperband", TrialState.PRUNED), ("asha", TrialState.RUNNING)):
        m = mirror(algorithm)
        assert m.name == "sync [s1]" and m.optuna_study.metric_names == ["loss"]
        for tid, value in ((0, 0.5), (1, 0.2), (2, 0.9)):
            m.sync_trial(trial(tid, "paused", 0, 3, value))
        states = {t.user_attrs["hpod_trial"]: t.state for t in m.optuna_study.trials}
        assert set(states.values()) == {TrialState.RUNNING}  # none promoted yet
        m.sync_trial(trial(1, "running", 1, 3, 0.2))  # the one the plan promotes
        states = {t.user_attrs["hpod_trial"]: t for t in m.optuna_study.trials}
        assert states[1].state == TrialState.RUNNING
        for tid in (0, 2):
            assert states[tid].state == expect, (algorithm, tid)
            if expect == TrialState.PRUNED:
                assert states[tid].datetime_complete is not None
                assert states[tid].user_attrs["hpod_state"] == "completed"
