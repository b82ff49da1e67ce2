"""The ``hpod`` command line as a user meets it: JSON output checked against
docs/cli-json.md, exit codes, one-line spec errors, loud failures, the incumbent of a stopped
study, progress figures, and the client's independence from the server package."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ctrl_c_delivered
from hpod.client.local import LocalCluster
from hpod.v1 import hpod_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "cli-json.md").read_text()
CLI = [sys.executable, "-m", "hpod.client.cli"]


def documented(heading: str) -> set[str]:
    """The field names of the first table under the ``### heading`` of docs/cli-json.md."""
    start = DOC.index(f"### {heading}\n") + len(heading) + 5
    section = DOC[start:].split("\n### ", 1)[0]
    fields = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert fields, f"no field table under {heading!r}"
    return set(fields)


TRIAL = documented("trial")
STUDY = documented("study")


def run(*args: str, check_rc: int | None = 0, cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=180, cwd=cwd)
    if check_rc is not None:
        assert res.returncode == check_rc, (args, res.returncode, res.stdout, res.stderr)
    return res


def run_json(*args: str, check_rc: int = 0) -> dict:
    res = run(*args, "--json", check_rc=check_rc)
    assert res.stdout.count("\n") == 1, "one JSON document on one line"
    return json.loads(res.stdout)


def assert_trial(doc: dict) -> None:
    assert set(doc) == TRIAL
    assert isinstance(doc["id"], int) and isinstance(doc["resource"], float)
    assert doc["value"] is None or isinstance(doc["value"], float)


def assert_study(doc: dict, extra: set[str] = frozenset()) -> None:
    assert set(doc) == STUDY | extra
    assert isinstance(doc["trials_total"], int) and isinstance(doc["resource_used"], float)
    if doc["best"] is not None:
        assert_trial(doc["best"])


def analytic(name: str, seed: int = 1, **space: dict) -> dict:
    spec = {"name": name, "trainer": "analytic",
            "objective": {"metric": "loss", "direction": "minimize"},
            "resource": {"name": "epoch", "max_resource": 9, "eta": 3},
            "algorithm": {"name": "hyperband"}, "seed": seed}
    if space:
        spec["search_space"] = space
    return spec


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


# ---------------------------------------------------------------- no server needed


@pytest.mark.parametrize("text, where, says", [
    ("trainer: analytic\nresource: {max_resource: twenty-seven}\n", ":2:",
     "resource.max_resource must be a number, got 'twenty-seven'"),
    ("trainer: analytic\nresource:\n  max_resource: 27\n eta: 3\n", ":4:",
     "not valid YAML"),
    ("trainer: analytic\nresorce: {max_resource: 27}\n", ":2:", "unknown field 'resorce'"),
    ("trainer: analytic\nresource: {max_resource: 9, etta: 3}\n", ":2:",
     "unknown field resource.etta"),
    ("trainer: nosuch\nresource: {max_resource: 9}\n", ":1:", "unknown trainer 'nosuch'"),
    ("resource: {max_resource: 9}\nsearch_space:\n  x: {type: float, low: 0, high: one}\n",
     ":3:", "search_space.x.high must be a number"),
])
def test_spec_mistakes_are_one_line_with_file_line_and_field(tmp_path, text, where, says
                                                            ) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    # The spec is checked before connecting: no server needs to run for the message.
    res = run("study", "create", str(path), "--address", "127.0.0.1:1", check_rc=2)
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{path}{where}" in res.stderr and says in res.stderr, res.stderr


def test_no_server_is_exit_code_3_with_what_to_do() -> None:
    res = run("study", "list", "--address", "127.0.0.1:1", check_rc=3)
    assert "hpod local" in res.stderr and "Traceback" not in res.stderr


def test_plan_simulate_and_redis_acl_json_match_the_doc() -> None:
    plan = run_json("plan", "--max-resource", "9")
    assert set(plan) == documented("`hpod plan --max-resource R --json`")
    assert plan["max_trials"] == 17 and plan["incremental_resource"] == 69
    sim = run_json("simulate", "--max-trials", "20")
    assert set(sim) == documented("`hpod simulate --json`")
    acl = run_json("redis-acl")
    assert set(acl) == documented("`hpod redis-acl --json`")


def test_client_modules_do_not_import_the_server() -> None:
    code = ("import sys, hpod.client, hpod.client.cli, hpod.client.sdk, hpod.client.spec, "
            "hpod.client.output, hpod.client.progress, hpod.client.local, hpod.client.pareto, "
            "hpod.client.safety; hpod.client.cli.build_parser(['study', 'list']); "
            "print([m for m in sys.modules if m.startswith('hpod.server') or m in "
            "('redis', 'numpy', 'torch', 'optuna', 'matplotlib', 'sklearn')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_base_install_is_the_client_only() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]}
    assert names == {"grpcio", "protobuf", "pyyaml", "rich"}
    extras = project["optional-dependencies"]
    assert {"server", "worker", "dev"} <= set(extras)
    assert any(d.startswith("hpod[") and "server" in d and "worker" in d for d in extras["dev"])


def test_insecure_bind_warning() -> None:
    from hpod.client.safety import insecure_bind_warning, plaintext_token_warning

    assert insecure_bind_warning("127.0.0.1:50051", False) is None
    assert insecure_bind_warning("[::1]:50051", False) is None
    assert insecure_bind_warning("localhost:50051", False) is None
    assert insecure_bind_warning("0.0.0.0:50051", True) is None
    warning = insecure_bind_warning("0.0.0.0:50051", False)
    assert warning and "every network interface" in warning and "authentication OFF" in warning
    assert insecure_bind_warning("[::]:50051", False)
    assert insecure_bind_warning("10.1.2.3:50051", False)
    assert plaintext_token_warning("10.1.2.3:50051", "t", tls=False)
    assert plaintext_token_warning("10.1.2.3:50051", "t", tls=True) is None
    assert plaintext_token_warning("127.0.0.1:50051", "t", tls=False) is None


def test_pareto_front_resolves_ties() -> None:
    from hpod.client.pareto import non_dominated
    from hpod.client.sdk import ParetoPoint

    def p(tid: int, cost: float, value: float) -> ParetoPoint:
        return ParetoPoint(tid, cost, value, {})

    pts = [p(1, 1.0, 0.5), p(2, 1.0, 0.4), p(3, 2.0, 0.4), p(4, 3.0, 0.2), p(5, 3.0, 0.2)]
    assert [q.trial_id for q in non_dominated(pts, maximize=False)] == [2, 4]
    assert [q.trial_id for q in non_dominated(pts, maximize=True)] == [1]


# ---------------------------------------------------------------- progress figures


class FakeStudy:
    """What the progress display reads of a study: ``info``, ``refresh`` and ``watch``."""

    def __init__(self, used: float, planned: float, events: list) -> None:
        info = pb.Study(id="s1", trials_total=40, trials_finished=12, resource_used=used)
        info.spec.resource.name = "epoch"
        info.plan.incremental_resource = planned
        info.create_time.FromSeconds(1000)
        self.info = info
        self.events = events
        self.id = "s1"

    def refresh(self) -> pb.Study:
        return self.info

    def watch(self, include_progress: bool = False):
        yield from self.events


def event(kind: str, tid: int | None, value: float | None = None, resource: float = 1.0,
          error: str = "") -> SimpleNamespace:
    trial = None if tid is None else SimpleNamespace(id=tid, error=error, bracket=0, rung=0)
    return SimpleNamespace(kind=kind, trial_id=tid, value=value, resource=resource,
                           trial=trial, time=0.0)


def test_progress_never_passes_100_percent_and_has_rate_and_eta() -> None:
    from hpod.client.progress import Status

    over = Status(FakeStudy(132, 108, []), now=lambda: 1066.0)
    assert over.fraction() == 1.0 and over.total() == 132 and over.eta() is None
    assert "132/132 epochs 100% (past the plan's estimate)" in over.line()
    under = Status(FakeStudy(30, 120, []), now=lambda: 1060.0)  # 60 s in, 0.5 epoch/s
    assert under.rate() == 0.5 and under.eta() is None  # no ETA from the first figures alone
    line = under.line()
    assert "elapsed 01:00" in line and "0.5 epochs/s" in line and "ETA -" in line
    # Later, the rate is what was trained since the display started: start-up left out.
    clock = [1060.0]
    later = Status(FakeStudy(30, 120, []), now=lambda: clock[0])
    assert later.rate() == 0.5
    clock[0], later.study.info.resource_used = 1080.0, 70
    assert later.rate() == 2.0 and later.eta() == 25.0
    assert "2 epochs/s" in later.line() and "ETA 00:25" in later.line()


def test_piped_progress_is_a_few_unwrapped_lines_and_a_summary() -> None:
    import io

    from hpod.client.progress import PlainProgress

    boom = "ValueError: unknown configuration keys ['lrr'] " + "x" * 150 + \
        "\nTraceback (most recent call last):\n  File ..."
    events = [event("created", i) for i in range(20)]
    events += [event("failed", i, error=boom) for i in range(20)]
    events += [event("paused", 30, value=2.5), event("completed", 31, value=1.5, resource=9)]
    events.append(event("study_ended", None))
    out = io.StringIO()
    PlainProgress(FakeStudy(40, 120, events), out).run()
    lines = out.getvalue().splitlines()
    failed = [ln for ln in lines if " failed: " in ln]
    assert len(failed) == 4  # 3 shown with the message, then one "the same error again"
    assert all("Traceback" not in ln for ln in lines)
    assert "the same error again" in failed[-1]
    assert "best so far 1.5 at 9 epochs (trial 31)" in lines[-2]
    assert lines[-1].startswith("[") and "study s1" in lines[-1] and "20 failed" in lines[-1]
    assert lines[0].startswith("[") and "Ctrl-C stops watching, not the study" in lines[0]
    assert len(lines) <= 9


# ---------------------------------------------------------------- against a server


@pytest.fixture(scope="module")
def finished(cluster: LocalCluster, tmp_path_factory) -> tuple[str, str]:
    """(address, id) of a finished analytic study created through `hpod study create --json`."""
    path = write_spec(tmp_path_factory.mktemp("spec"), analytic("cli-json"))
    created = run_json("study", "create", str(path), "--address", cluster.address)
    assert_study(created)
    assert created["state"] == "active" and created["name"] == "cli-json"
    run("study", "watch", created["id"], "--address", cluster.address)
    return cluster.address, created["id"]


def test_list_show_best_watch_json_match_the_doc(finished) -> None:
    address, sid = finished
    listing = run_json("study", "list", "--address", address)
    assert set(listing) == documented("`hpod study list --json`")
    mine = next(s for s in listing["studies"] if s["id"] == sid)
    assert_study(mine, {"first_trial_error"})
    assert mine["state"] == "completed" and mine["trials_total"] == 17 == mine["trials_finished"]
    assert mine["best"]["resource"] == 9 and mine["first_trial_error"] is None

    show = run_json("study", "show", sid, "--address", address)
    assert set(show) == documented("`hpod study show ID --json`")
    assert_study(show["study"])
    assert len(show["trials"]) == 17 and show["trials_failed"] == 0
    for t in show["trials"]:
        assert_trial(t)
    assert show["trials"][0]["id"] == show["study"]["best"]["id"]  # furthest-trained, best first
    assert run_json("study", "watch", sid, "--address", address) == show

    best = run_json("study", "best", sid, "--address", address)
    assert set(best) == TRIAL | documented("`hpod study best ID --json`")
    assert best["source"] == "algorithm" and best["id"] == show["study"]["best"]["id"]


def test_human_output_has_headers(finished) -> None:
    address, sid = finished
    listing = run("study", "list", "--address", address).stdout.splitlines()
    assert listing[0].split() == ["id", "name", "algorithm", "trainer", "state", "finished",
                                  "best", "error"]
    assert any(line.startswith(sid) and "completed" in line for line in listing)
    show = run("study", "show", sid, "--address", address).stdout
    assert f"study {sid} (cli-json): COMPLETED" in show
    assert re.search(r"^trial +state +loss +epoch +bracket +rung +cost s +config +error$", show,
                     re.M)
    assert "best trial (algorithm's rule)" in show


def test_export_plot_and_pareto_json_match_the_doc(finished, cluster, tmp_path) -> None:
    address, sid = finished
    url = f"sqlite:///{tmp_path / 'o.db'}"
    export = run_json("study", "export", sid, "--optuna-storage", url, "--address", address)
    assert set(export) == documented("`hpod study export ID --optuna-storage URL --json`")
    assert export["optuna_study"] == f"cli-json [{sid}]" and export["trials"] == 17
    plot = run_json("study", "plot", sid, "--out", str(tmp_path / "p"), "--address", address)
    assert set(plot) == documented("`hpod study plot ID --out DIR --json`")
    assert all(Path(f).exists() for f in plot["files"]) and plot["notes"]
    with cluster.client() as client:  # an ask/tell CARBS study: a front needs no workers
        carbs = client.create_study({"name": "front", "resource": {"max_resource": 9},
                                     "algorithm": "carbs", "max_trials": 4, "search_space": {
                                         "lr": {"type": "float", "low": 1e-3, "high": 1,
                                                "log": True}}})
    front = run_json("study", "pareto", carbs.id, "--address", address)
    assert set(front) == documented("`hpod study pareto ID --json`")
    stopped = run_json("study", "stop", carbs.id, "--address", address)
    assert_study(stopped)
    assert stopped["state"] == "stopped"


def test_request_errors_have_exit_codes(finished) -> None:
    address, sid = finished
    res = run("study", "show", "nosuchstudy", "--address", address, check_rc=2)
    assert "NOT_FOUND" in res.stderr and "Traceback" not in res.stderr
    res = run("study", "raise-max-resource", sid, "--address", address, check_rc=2)
    assert "Traceback" not in res.stderr


def test_a_misspelled_parameter_study_fails_loudly(cluster, tmp_path) -> None:
    """Every trial fails on the worker (the analytic trainer knows no 'lrr'): list, show and
    watch say so with the first error, and watch and show exit 1."""
    space = {"x1": {"type": "float", "low": -5, "high": 10},
             "x2": {"type": "float", "low": 0, "high": 15},
             "lrr": {"type": "float", "low": 1e-4, "high": 1, "log": True}}
    path = write_spec(tmp_path, analytic("misspelled", **space))
    res = run("study", "create", str(path), "--watch", "--address", cluster.address,
              check_rc=1)
    sid = res.stdout.splitlines()[0]
    assert "unknown configuration keys ['lrr']" in res.stdout  # the trials' error, in the table
    assert "trials failed; first error" in res.stdout
    assert "failed: ValueError: unknown configuration keys ['lrr']" in res.stderr  # progress

    listing = run_json("study", "list", "--address", cluster.address)
    mine = next(s for s in listing["studies"] if s["id"] == sid)
    assert mine["best"] is None
    # The server may mark the study failed with the first error, or leave it to the trials.
    said = (mine["error"] or "") + (mine["first_trial_error"] or "")
    assert "unknown configuration keys ['lrr']" in said
    assert "unknown configuration keys" in run("study", "list", "--address",
                                               cluster.address).stdout
    show = run_json("study", "show", sid, "--address", cluster.address, check_rc=1)
    # The server fails the study once its first five trials have failed; a trial still
    # running then is stopped with it.
    assert show["study"]["state"] == "failed"
    assert show["trials_failed"] >= 5
    assert "unknown configuration keys ['lrr']" in show["first_trial_error"]["error"]
    assert "Traceback" not in show["first_trial_error"]["error"]
    assert all((t["state"] == "failed" and t["error"]) or t["state"] == "stopped"
               for t in show["trials"])
    best = run_json("study", "best", sid, "--address", cluster.address, check_rc=1)
    assert best["source"] == "none" and best["id"] is None


def test_best_of_a_stopped_study_is_its_incumbent(cluster) -> None:
    """Stopped before any trial reached the maximum resource: `best` still answers, with the
    best of the furthest-trained trials, and says so."""
    with cluster.client() as client:
        study = client.create_study({"name": "stopped-early", "resource": {"max_resource": 9},
                                     "algorithm": "hyperband", "seed": 2, "search_space": {
                                         "x": {"type": "float", "low": 0, "high": 1}}})
        values = {}
        for value in (0.7, 0.3, 0.5):  # three rung-0 results of the ask/tell study
            job = study.ask()
            assert job.to_resource < 9
            job.report(job.to_resource, value)
            job.complete(value)
            values[job.trial_id] = value
        study.stop()
    best = run_json("study", "best", study.id, "--address", cluster.address)
    assert best["source"] == "incumbent"
    assert best["value"] == 0.3 and best["id"] == min(values, key=values.get)
    text = run("study", "best", study.id, "--address", cluster.address).stdout
    assert "incumbent" in text and "value 0.3" in text


def test_ctrl_c_on_watch_says_the_study_goes_on(cluster) -> None:
    import signal

    with cluster.client() as client:  # ask/tell and nobody asks: it stays active
        study = client.create_study({"name": "idle", "resource": {"max_resource": 9},
                                     "algorithm": "hyperband", "search_space": {
                                         "x": {"type": "float", "low": 0, "high": 1}}})
    with ctrl_c_delivered():
        proc = subprocess.Popen([*CLI, "study", "watch", study.id, "--address",
                                 cluster.address], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the watch is under way once it says so
    assert "Ctrl-C stops watching, not the study" in first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"study {study.id} goes on on the server" in err and "Traceback" not in err
    with cluster.client() as client:
        assert client.study(study.id).info.state == pb.STUDY_STATE_ACTIVE


@pytest.mark.parametrize("blocked, argv, extra", [
    ("numpy", ["plan", "--max-resource", "9"], "hpod[server]"),
    ("redis", ["local", "--workdir", "WORKDIR", "--port", "1"], "hpod[server,worker]"),
])
def test_a_missing_extra_is_named(tmp_path, blocked, argv, extra) -> None:
    """As with `pip install hpod` alone: the command says which extra brings what it needs."""
    argv = [a.replace("WORKDIR", str(tmp_path / "w")) for a in argv]
    code = (f"import sys; sys.modules[{blocked!r}] = None; "
            f"from hpod.client.cli import main; sys.exit(main({argv!r}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2, res.stderr
    assert f"needs {blocked!r}" in res.stderr and f"pip install '{extra}'" in res.stderr
    assert "Traceback" not in res.stderr
