"""``hpod local`` as a user runs it: no flags, data in ./.hpod, stopped by SIGTERM (what a
service manager, ``docker stop`` or a closed terminal sends) and started again in the same
directory: the study carries on to the end and nothing it started is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ctrl_c_delivered, wait_for
from hpod.client.local import free_port
from hpod.client.sdk import Client

CLI = [sys.executable, "-m", "hpod.client.cli"]
STOP_TIMEOUT = 60  # generous: a loaded machine; the cluster's own bound is a few seconds


def children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":  # zombies are gone, only not yet reaped
                parent[int(entry.name)] = int(fields[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo += kids
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


class Local:
    """``hpod local --json`` in ``cwd`` with no other flags but a free port."""

    def __init__(self, cwd: Path, *extra: str) -> None:
        self.proc = subprocess.Popen([*CLI, "local", "--port", str(free_port()), "--workers",
                                      "1", "--json", *extra], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.about = json.loads(line)

    def stop(self, sig: int) -> tuple[int, str]:
        started = children(self.proc.pid)
        assert len(started) >= 3  # redis-server, the server and a worker at least
        self.proc.send_signal(sig)
        rc = self.proc.wait(STOP_TIMEOUT)
        wait_for(lambda: not alive(started), 60, "every process hpod local started to exit")
        return rc, self.proc.stderr.read()


@pytest.mark.slow
def test_sigterm_then_restart_without_flags_finishes_the_study(tmp_path) -> None:
    first = Local(tmp_path)
    assert first.about["workdir"] == str(tmp_path / ".hpod")
    assert first.about["address"].startswith("127.0.0.1:")  # loopback by default
    spec = {"name": "restarted", "trainer": "analytic",
            "resource": {"name": "epoch", "max_resource": 9, "eta": 3},
            "algorithm": "hyperband", "seed": 4, "trainer_settings": {"step_seconds": 0.1}}
    with Client(first.about["address"]) as client:
        study = client.create_study(spec)
        wait_for(lambda: study.refresh().trials_finished >= 3, 120, "trials to finish")
        assert study.info.state == 1, "still active when stopped"
    rc, err = first.stop(signal.SIGTERM)
    assert rc == 0 and "SIGTERM: stopping" in err and "Traceback" not in err
    assert not (tmp_path / ".hpod" / "local.pid").exists()
    assert (tmp_path / ".hpod" / "redis" / "appendonly.aof").exists() or \
        (tmp_path / ".hpod" / "redis" / "appendonlydir").exists()

    with ctrl_c_delivered():  # it is stopped with Ctrl-C below
        second = Local(tmp_path)
    assert second.about["resumed_studies"] == [study.id]
    with Client(second.about["address"]) as client:
        info = client.study(study.id).wait(timeout=300)
        assert info.state == 2 and info.trials_total == info.trials_finished == 17
    rc, err = second.stop(signal.SIGINT)
    assert rc == 0 and "Traceback" not in err


@pytest.mark.slow
def test_a_second_local_in_the_same_directory_is_refused(tmp_path) -> None:
    first = Local(tmp_path)
    try:
        res = subprocess.run([*CLI, "local", "--port", str(free_port())], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2
        assert f"another hpod local (pid {first.proc.pid})" in res.stderr
    finally:
        first.stop(signal.SIGTERM)


@pytest.mark.slow
def test_local_starts_workers_for_a_study_whose_trainer_none_runs(tmp_path) -> None:
    """`scaling` is not among the default trainers: a study for it gets its workers."""
    local = Local(tmp_path)
    assert "scaling" not in local.about["trainers"]
    spec = {"name": "scaling", "trainer": "scaling", "resource": {"max_resource": 9},
            "algorithm": "random", "max_trials": 2}
    try:
        with Client(local.about["address"]) as client:
            info = client.create_study(spec).wait(timeout=240)
            assert info.state == 2 and info.trials_finished == 2
    finally:
        rc, err = local.stop(signal.SIGTERM)
    assert rc == 0 and "needs trainer 'scaling': starting 1 workers" in err


@pytest.mark.slow
def test_demo_json_is_the_show_document_and_leaves_nothing_behind(tmp_path) -> None:
    from test_cli import STUDY, TRIAL, documented

    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the demo's temporary folder goes
    res = subprocess.run([*CLI, "demo", "--json", "--max-resource", "3", "--workers", "1"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert set(doc) == documented("`hpod study show ID --json`")
    assert set(doc["study"]) == STUDY and doc["study"]["state"] == "completed"
    assert all(set(t) == TRIAL for t in doc["trials"])
    assert doc["study"]["best"]["resource"] == 3
    assert not list(tmp_path.glob("hpod-local-*")), "the demo's folder (checkpoints) is deleted"
