"""Optuna interoperability, plots and the live watch view, against a real cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from hpod.client.local import LocalCluster
from hpod.client.optuna_export import OptunaMirror, export_study, open_storage
from hpod.client.sdk import Study
from hpod.client.spec import SpecError, build_spec, grid, int_params
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_mirror(study_id: str, storage: object) -> optuna.Study:
    """The Optuna study a mirror wrote for hpod study ``study_id`` (found by its user attribute,
    whatever its name); KeyError while there is none."""
    for s in optuna.get_all_study_summaries(storage):
        if s.user_attrs.get("hpod_study_id") == study_id:
            return optuna.load_study(study_name=s.study_name, storage=storage)
    raise KeyError(study_id)
CLI = [sys.executable, "-m", "hpod.client.cli"]


def spec(seed: int = 7, step_seconds: float = 0.02, **extra: object) -> dict:
    return {"name": "eco", "trainer": "analytic",
            "objective": {"metric": "loss", "direction": "minimize"},
            "resource": {"name": "epoch", "max_resource": 9, "eta": 3},
            "algorithm": {"name": "hyperband"}, "seed": seed,
            "trainer_settings": {"step_seconds": step_seconds}, **extra}


# ---------------------------------------------------------------- search spaces


def test_optuna_distributions_convert_exactly_and_back() -> None:
    from hpod.client.optuna_export import optuna_distributions

    space = {"lr": FloatDistribution(1e-4, 1.0, log=True),
             "dropout": FloatDistribution(0.0, 0.8),
             "width": IntDistribution(32, 512, log=True),
             "layers": IntDistribution(1, 4, step=1),
             "act": CategoricalDistribution(["relu", "tanh", None]),
             "batch": CategoricalDistribution([16, 32, 64])}
    msg = build_spec({"resource": {"max_resource": 9}, "algorithm": "random",
                      "search_space": space})
    by_name = {p.name: p for p in msg.search_space}
    assert by_name["lr"].float_range.low == 1e-4 and by_name["lr"].float_range.scale == 2
    assert by_name["width"].int_range.high == 512
    assert optuna_distributions(msg) == space  # the inverse gives the very same distributions
    # JSON has only doubles: the SDK gives integer parameters and choices back as ints.
    assert int_params(msg) == {"width", "layers", "batch"}


def test_deprecated_optuna_distributions_convert() -> None:
    with pytest.warns(FutureWarning):
        old = {"a": optuna.distributions.LogUniformDistribution(1e-3, 1.0),
               "b": optuna.distributions.IntUniformDistribution(0, 9)}
    msg = build_spec({"resource": {"max_resource": 9}, "algorithm": "random",
                      "search_space": old})
    assert msg.search_space[0].float_range.scale == 2
    assert msg.search_space[1].int_range.high == 9


def test_a_step_hpod_cannot_express_is_a_clear_error() -> None:
    for dist in (FloatDistribution(0.0, 1.0, step=0.1), IntDistribution(0, 10, step=2)):
        with pytest.raises(SpecError, match="step=.*cannot express.*grid"):
            build_spec({"resource": {"max_resource": 9}, "algorithm": "random",
                        "search_space": {"x": dist}})
    assert grid(FloatDistribution(0.0, 0.5, step=0.1))["choices"] == [0.0, 0.1, 0.2, 0.3,
                                                                      0.4, 0.5]
    assert grid(IntDistribution(0, 10, step=2))["choices"] == [0, 2, 4, 6, 8, 10]


def test_optuna_space_drives_a_real_study(cluster: LocalCluster) -> None:
    space = {"x1": FloatDistribution(-5.0, 10.0), "x2": FloatDistribution(0.0, 15.0),
             "lr": FloatDistribution(1e-4, 1.0, log=True)}
    with cluster.client() as client:
        study = client.create_study({**spec(step_seconds=0.0), "search_space": space})
        study.wait(timeout=60)
        for t in study.trials(curves=False):
            assert all(space[k]._contains(space[k].to_internal_repr(v))
                       for k, v in t.config.items())


# ---------------------------------------------------------------- live mirror


@pytest.fixture(scope="module")
def mirrored(cluster: LocalCluster, tmp_path_factory) -> tuple[Study, Path, bool]:
    """A study mirrored live into a journal file while another reader polls the file."""
    journal = tmp_path_factory.mktemp("mirror") / "hpod.journal"
    client = cluster.client()
    study = client.create_study(spec())
    thread = threading.Thread(target=export_study, args=(study, str(journal), True))
    thread.start()
    seen_live = False
    deadline = time.time() + 60
    while thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
        if journal.exists():
            try:
                reader = load_mirror(study.id, open_storage(str(journal)))
            except KeyError:  # the file exists before the mirror has created the study
                continue
            if any(t.state == TrialState.RUNNING and t.intermediate_values
                   for t in reader.get_trials(deepcopy=False)):
                seen_live = study.refresh().state == 1  # the hpod study is still active
                break
    thread.join(60)
    assert not thread.is_alive()
    yield study, journal, seen_live
    client.close()


def test_mirror_of_a_running_study_reads_back_in_optuna(mirrored) -> None:
    study, journal, seen_live = mirrored
    assert seen_live, "a running trial with a curve was in the journal while the study ran"
    assert study.refresh().state == 2
    ostudy = load_mirror(study.id, open_storage(str(journal)))
    hpod_trials = {t.id: t for t in study.trials(curves=True)}
    assert len(ostudy.trials) == len(hpod_trials) == 17
    for ot in ostudy.trials:
        ht = hpod_trials[ot.user_attrs["hpod_trial"]]
        assert ot.params == ht.config
        assert ot.intermediate_values == {int(r): v for r, v in ht.curve}
        assert (ot.user_attrs["bracket"], ot.user_attrs["rung"]) == (ht.bracket, ht.rung)
        at_max = ht.resource == 9
        assert ot.state == (TrialState.COMPLETE if at_max else TrialState.PRUNED)
        assert ot.value == ht.value
        assert ot.user_attrs["step_times"], "the live mirror timed every curve point"
    best = study.best_trial()
    assert ostudy.best_trial.user_attrs["hpod_trial"] == best.id
    assert ostudy.best_value == best.value
    assert ostudy.user_attrs["resource_name"] == "epoch"
    # The study's own name and metric, not hpod-<id> and "Objective 0".
    assert ostudy.study_name == f"eco [{study.id}]"
    assert ostudy.metric_names == ["loss"]


def test_exporting_again_adds_nothing(mirrored) -> None:
    study, journal, _ = mirrored
    mirror = OptunaMirror(study, str(journal))
    before = len(mirror.optuna_study.trials)
    mirror.sync_all()
    assert len(mirror.optuna_study.trials) == before


def test_cli_exports_a_finished_study_to_sqlite(mirrored, tmp_path, cluster) -> None:
    study, _, _ = mirrored
    url = f"sqlite:///{tmp_path / 'hpod.db'}"
    out = subprocess.run([*CLI, "study", "export", study.id, "--optuna-storage", url,
                          "--address", cluster.address], check=True, capture_output=True,
                         text=True).stdout
    assert "17 trials" in out
    ostudy = load_mirror(study.id, url)
    assert ostudy.best_trial.user_attrs["hpod_trial"] == study.best_trial().id


# ---------------------------------------------------------------- optuna-dashboard


def _get_json(url: str) -> object:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def dashboard(mirrored) -> tuple[str, int]:
    """optuna-dashboard serving the live mirror's journal file: (base URL, Optuna study id)."""
    exe = Path(sys.executable).parent / "optuna-dashboard"
    if not exe.exists():
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard==0.21.0)")
    from hpod.server.store.embedded import free_port

    study, journal, _ = mirrored
    port = free_port()
    proc = subprocess.Popen([str(exe), str(journal), "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                summaries = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        sid = next(s["study_id"] for s in summaries if s["study_name"] == f"eco [{study.id}]")
        yield base, sid
    finally:
        proc.terminate()
        proc.wait(10)


def test_optuna_dashboard_serves_the_mirrored_study(mirrored, dashboard) -> None:
    study, _, _ = mirrored
    base, sid = dashboard
    detail = _get_json(f"{base}/api/studies/{sid}?after=0")
    hpod_trials = {t.id: t for t in study.trials(curves=True)}
    assert len(detail["trials"]) == len(hpod_trials)
    assert detail["has_intermediate_values"]
    for t in detail["trials"]:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        ht = hpod_trials[int(attrs["hpod_trial"])]
        assert {p["name"] for p in t["params"]} == set(ht.config)
        assert [(iv["step"], iv["value"]) for iv in t["intermediate_values"]] == [
            (int(r), v) for r, v in ht.curve]
    best = [{a["key"]: a["value"] for a in t["user_attrs"]}["hpod_trial"]
            for t in detail["best_trials"]]
    assert best == [str(study.best_trial().id)]


def test_dashboard_page_in_headless_chromium_shows_the_trials(mirrored, dashboard) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    base, sid = dashboard
    study, _, _ = mirrored
    want = {f"Trial {n}" for n in range(len(study.trials(curves=False)))}
    seen: set[str] = set()
    for _ in range(3):  # a busy machine may dump the page before the last trials rendered
        # --virtual-time-budget lets the single-page app fetch the API and render before the
        # DOM is dumped.
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-dev-shm-usage", "--window-size=1280,2000",
                              "--virtual-time-budget=20000", "--dump-dom",
                              f"{base}/dashboard/studies/{sid}/trials"],
                             capture_output=True, text=True, timeout=60).stdout
        assert f"eco [{study.id}]" in dom
        seen = {w for w in want if f"{w}<" in dom or f"{w} " in dom}
        if seen == want:
            break
    assert seen == want, f"trials missing on the page: {sorted(want - seen)}"


# ---------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALWAYS = {"learning_curves", "best_vs_resource", "rungs", "importance"}
TIMED = ALWAYS | {"best_vs_time", "occupancy", "workers"}
UNTIMED = ALWAYS | {"best_vs_device_time", "cost_per_trial"}


def _check_pngs(paths: list[Path], names: set[str]) -> None:
    from PIL import Image

    assert {p.stem for p in paths} == names
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
        assert 5_000 < p.stat().st_size < 2_000_000, p
        with Image.open(p) as im:
            assert im.width >= 600 and im.height >= 400


def test_plots_of_a_real_study_from_its_live_mirror(mirrored, tmp_path) -> None:
    study, journal, _ = mirrored
    _check_pngs(study.plot(str(tmp_path / "plots"), str(journal)), TIMED)


def test_cli_plots_without_a_mirror_say_what_they_need(mirrored, tmp_path, cluster) -> None:
    import json

    study, _, _ = mirrored
    res = subprocess.run([*CLI, "study", "plot", study.id, "--out", str(tmp_path),
                          "--address", cluster.address], check=True, capture_output=True,
                         text=True)
    _check_pngs([Path(line) for line in res.stdout.split()], UNTIMED)
    # No empty panels under a timeline's name: the note says what a timeline needs, and the
    # importance plot says there are too few trials at the maximum resource (5 of 17 here).
    assert "need wall-clock times" in res.stderr and "--optuna-storage" in res.stderr
    assert "fANOVA needs at least" in res.stderr
    doc = json.loads(subprocess.run([*CLI, "study", "plot", study.id, "--out", str(tmp_path),
                                     "--address", cluster.address, "--json"], check=True,
                                    capture_output=True, text=True).stdout)
    assert {Path(f).stem for f in doc["files"]} == UNTIMED and len(doc["notes"]) == 2


# ---------------------------------------------------------------- live watch view


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session, "-S", "-200"],
                          capture_output=True, text=True).stdout


def test_watch_view_in_a_terminal_shows_bars(cluster: LocalCluster, tmp_path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux) so no terminal to "
                    "capture the live view in")
    with cluster.client() as client:
        study = client.create_study(spec(seed=3, step_seconds=0.05))
    session = f"hpod-watch-{study.id}"
    cmd = " ".join([*CLI, "study", "watch", study.id, "--address", cluster.address])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "130", "-y", "45",
                    f"{cmd}; sleep 60"], check=True)
    try:
        running, final = "", ""
        deadline = time.time() + 60
        while time.time() < deadline:
            screen = _pane(session)
            if not running and ("workers busy 1" in screen or "workers busy 2" in screen):
                running = screen
            if "best trial (algorithm's rule)" in screen:
                final = screen
                break
            time.sleep(0.1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert running, "the view showed busy workers while the study ran"
    assert "bracket 2 rung 0 @1" in running and "━" in running and "events" in running
    assert "9/9" in final and "study_ended" in final and "best " in final
