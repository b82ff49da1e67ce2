"""Checkpoint life cycle: files, formats, pruning, and what a real worker keeps or deletes as
its jobs complete, stop or lose their lease. Real files, a real Redis, the worker's own code
(run in a thread; the job stream is fed as the server feeds it)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from helpers import wait_for
from hpod.server.store import keys
from hpod.server.store.embedded import EmbeddedRedis
from hpod.trainers import checkpoints
from hpod.trainers.checkpoints import PruneResult, prune_study_checkpoints
from hpod.trainers.worker import Worker


def put(root: Path, study: str, trial: int, resource: float, nbytes: int) -> Path:
    path = checkpoints.checkpoint_path(root, study, trial, resource)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * nbytes)
    return path


# ---------------------------------------------------------------- files and pruning


def test_prune_keeps_only_the_newest_checkpoint_of_the_kept_trials(tmp_path) -> None:
    put(tmp_path, "s1", 0, 1, 100)
    put(tmp_path, "s1", 0, 3, 200)
    put(tmp_path, "s1", 0, 9, 300)  # trial 0's newest: kept
    put(tmp_path, "s1", 1, 1, 50)
    put(tmp_path, "s1", 1, 3, 60)  # trial 1 is not kept: all go
    put(tmp_path, "s1", 2, 27, 70)  # trial 2 is kept: its only file stays
    (tmp_path / "s1" / "2" / "r30.pt.tmp99-1").write_bytes(b"y" * 5)  # a crashed write
    other = put(tmp_path, "s2", 0, 1, 40)  # another study is untouched

    assert checkpoints.study_bytes(tmp_path, "s1") == 100 + 200 + 300 + 50 + 60 + 70 + 5
    result = prune_study_checkpoints(tmp_path, "s1", keep_trial_ids=[0, 2])
    assert checkpoints.study_bytes(tmp_path, "s1") == result.kept

    assert result == PruneResult(freed=100 + 200 + 50 + 60 + 5, kept=300 + 70)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["s1/0/r9.pt", "s1/2/r27.pt", "s2/0/r1.pt"]
    assert not (tmp_path / "s1" / "1").exists()  # emptied folders go
    assert other.exists()
    # Again: nothing more to free; with no trial kept the study's folder goes entirely.
    assert prune_study_checkpoints(tmp_path, "s1", [0, 2]) == PruneResult(0, 370)
    assert prune_study_checkpoints(tmp_path, "s1", []) == PruneResult(370, 0)
    assert not (tmp_path / "s1").exists()
    assert prune_study_checkpoints(tmp_path, "missing", [1]) == PruneResult(0, 0)


def test_newest_is_by_resource_not_by_name(tmp_path) -> None:
    put(tmp_path, "s", 4, 9, 1)
    put(tmp_path, "s", 4, 27, 2)
    put(tmp_path, "s", 4, 1.5, 3)
    assert prune_study_checkpoints(tmp_path, "s", {4}) == PruneResult(freed=4, kept=2)
    assert [p.name for p in (tmp_path / "s" / "4").iterdir()] == ["r27.pt"]


def test_ids_that_would_escape_the_folder_are_refused(tmp_path) -> None:
    for bad in ("..", "a/b", ""):
        with pytest.raises(ValueError, match="cannot name a checkpoint folder"):
            prune_study_checkpoints(tmp_path, bad, [])


def test_pickle_without_torch_and_torch_when_loaded(tmp_path) -> None:
    # A process without torch writes pickle; torch's own format once torch is imported; read()
    # tells them apart by the bytes. Both in subprocesses, so this test's imports do not count.
    code = (
        "import sys; from pathlib import Path; from hpod.trainers import checkpoints as c\n"
        "p = Path(sys.argv[1]); c.write(p / 'plain.pt', {'w': [1, 2], 'epoch': 3})\n"
        "assert 'torch' not in sys.modules\n"
        "import torch; c.write(p / 'torch.pt', {'w': torch.ones(2), 'epoch': 4})\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert pickle.loads((tmp_path / "plain.pt").read_bytes()) == {"w": [1, 2], "epoch": 3}
    assert (tmp_path / "torch.pt").read_bytes()[:4] == b"PK\x03\x04"
    read_back = (
        "import sys; from pathlib import Path; from hpod.trainers import checkpoints as c\n"
        "p = Path(sys.argv[1]); assert c.read(p / 'plain.pt')['epoch'] == 3\n"
        "assert 'torch' not in sys.modules\n"
        "t = c.read(p / 'torch.pt'); assert t['epoch'] == 4 and float(t['w'].sum()) == 2.0\n"
    )
    subprocess.run([sys.executable, "-c", read_back, str(tmp_path)], check=True)
    assert not list(tmp_path.glob("*.tmp*"))  # written then renamed


# ---------------------------------------------------------------- a real worker's life cycle

STUDY = "sck"


class Feeder:
    """Puts jobs in the analytic trainer's stream as the server does, reads the events back."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url, decode_responses=True)

    def job(self, job_id: str, r0: float, r1: float, trial: int = 0,
            step_seconds: float = 0.0, trainer: str = "analytic") -> None:
        body = {"study_id": STUDY, "job_id": job_id, "trial_id": trial, "config": {},
                "from_resource": r0, "to_resource": r1, "bracket": 0, "rung": 0,
                "attempt": 0, "trainer": trainer, "max_resource": 27.0, "seed": 5,
                "trainer_settings": {"step_seconds": step_seconds}}
        self.r.xadd(keys.jobs(trainer), {"j": json.dumps(body)})

    def events(self, job_id: str) -> list[dict]:
        out = [json.loads(f["e"]) for _, f in self.r.xrange(keys.events(STUDY))]
        return [e for e in out if e["job_id"] == job_id]

    def ended(self, job_id: str) -> dict | None:
        ends = [e for e in self.events(job_id) if e["op"] in ("complete", "fail")]
        return ends[-1] if ends else None

    def progressed(self, job_id: str) -> bool:
        return any(e["op"] == "progress" for e in self.events(job_id))


@pytest.fixture
def running(tmp_path):
    """A worker (keep no models, so every continuation reads its checkpoint) in a thread."""
    with EmbeddedRedis(str(tmp_path / "redis")) as rs:
        w = Worker(rs.url, ["analytic"], str(tmp_path / "ckpt"), delete_after=0.0,
                   lease_seconds=4.0,
                   keep_models=0)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        try:
            yield Feeder(rs.url), w, tmp_path / "ckpt" / STUDY
        finally:
            w.drain()
            t.join(30)


def finished(w: Worker, n: int) -> None:
    """Wait until the worker is through with its n-th job, clean-up included."""
    wait_for(lambda: w.jobs_done >= n, what=f"{n} jobs done")


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_completed_segment_deletes_the_checkpoint_it_resumed_from(running) -> None:
    feed, w, study_dir = running
    feed.job("j1", 0, 1)
    finished(w, 1)
    assert files(study_dir / "0") == ["r1.pt"]
    assert feed.ended("j1")["checkpoint_bytes"] == (study_dir / "0" / "r1.pt").stat().st_size

    feed.job("j2", 1, 3)  # a promotion: resumes from r1, which then goes
    finished(w, 2)
    end = feed.ended("j2")
    assert end["op"] == "complete" and end["resource"] == 3
    assert files(study_dir / "0") == ["r3.pt"]
    assert end["checkpoint_bytes"] == (study_dir / "0" / "r3.pt").stat().st_size > 0


def test_a_stopped_job_writes_nothing_and_deletes_what_it_resumed_from(running) -> None:
    feed, w, study_dir = running
    feed.job("j1", 0, 3)
    finished(w, 1)
    feed.job("j2", 3, 27, step_seconds=0.2)
    wait_for(lambda: feed.progressed("j2"), what="j2 running")
    feed.r.sadd(keys.stopped_jobs(STUDY), "j2")  # a STOP decision: the trial is final
    finished(w, 2)
    end = feed.ended("j2")
    assert end["op"] == "complete" and end["resource"] < 27
    assert end["checkpoint_bytes"] == 0
    assert files(study_dir / "0") == []


def test_a_job_whose_lease_was_taken_back_keeps_the_start_checkpoint(running) -> None:
    feed, w, study_dir = running
    feed.job("j1", 0, 3)
    finished(w, 1)
    feed.job("j2", 3, 27, step_seconds=0.2)
    wait_for(lambda: feed.progressed("j2"), what="j2 running")
    # What the server's reaper commits for a lost job: the lease entry retired and the job
    # put on the stop list, in one transaction. A retry will resume from r3 elsewhere.
    stream = keys.jobs("analytic")
    (pending,) = feed.r.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10)
    with feed.r.pipeline(transaction=True) as p:
        p.xack(stream, keys.WORKER_GROUP, pending["message_id"])
        p.xdel(stream, pending["message_id"])
        p.sadd(keys.stopped_jobs(STUDY), "j2")
        p.execute()
    finished(w, 2)
    assert files(study_dir / "0") == ["r3.pt"]  # the retry's start: kept


def test_a_failed_trial_deletes_the_checkpoint_it_resumed_from(running) -> None:
    feed, w, study_dir = running
    feed.job("j1", 0, 3)
    finished(w, 1)
    # Resuming at a resource the checkpoint does not hold fails inside the trainer.
    bad = checkpoints.checkpoint_path(study_dir.parent, STUDY, 0, 5)
    checkpoints.write(bad, {"epoch": 3})
    feed.job("j2", 5, 9)
    finished(w, 2)
    assert feed.ended("j2")["op"] == "fail"
    assert "checkpoint" in feed.ended("j2")["reason"]
    assert files(study_dir / "0") == ["r3.pt"]  # r5 (its start) went; nothing was written


def test_lease_watch_tells_a_lease_held_throughout_from_a_lapsed_one(monkeypatch) -> None:
    from hpod.trainers import worker

    now = [100.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: now[0])
    w = worker.LeaseWatch(limit=5.0, since=100.0)
    for _ in range(10):  # renewals every 2 s: never idle for 5
        now[0] += 2.0
        w.renewed(now[0] - 0.1, True)
    assert w.kept()
    now[0] += 6.0  # nothing for 6 s: the server may have taken it back
    assert not w.kept()
    w.renewed(now[0], True)
    assert not w.kept()  # a lapse is never forgotten

    now[0] = 100.0
    w = worker.LeaseWatch(limit=5.0, since=100.0)
    w.end()
    w.renewed(100.0, False)  # a heartbeat that met our own XACK
    assert w.kept()
    w.renewed(100.0, False, final=True)  # our XACK found the entry gone: taken back
    assert not w.kept()
    w = worker.LeaseWatch(limit=5.0, since=100.0)
    w.renewed(100.0, False)  # before the end: the server retired the entry
    assert not w.kept()


def stepping(config, ctx) -> None:
    """A function trainer for the test below: resumes its epoch count, sleeps per step."""
    state = ctx.load() or {"epoch": 0}
    assert state["epoch"] == ctx.from_resource
    for epoch in ctx.steps():
        time.sleep(float(ctx.settings["step_seconds"]))
        if ctx.report(epoch, 1.0 / epoch):
            break
    ctx.save({"epoch": epoch})


def test_sigterm_hands_a_function_job_back_and_keeps_its_start(tmp_path) -> None:
    trainer = f"{__name__}:stepping"
    with EmbeddedRedis(str(tmp_path / "redis")) as rs:
        w = Worker(rs.url, [trainer], str(tmp_path / "ckpt"), keep_models=0, delete_after=0.0)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        feed, study_dir = Feeder(rs.url), tmp_path / "ckpt" / STUDY
        feed.job("j1", 0, 3, trainer=trainer)
        finished(w, 1)
        assert files(study_dir / "0") == ["r3.pt"]
        feed.job("j2", 3, 27, step_seconds=0.1, trainer=trainer)
        wait_for(lambda: feed.progressed("j2"), what="j2 running")
        w.drain()  # what SIGTERM does
        t.join(30)
        assert not t.is_alive()
        assert feed.ended("j2") is None  # handed back, not completed, not failed
        (pending,) = feed.r.xpending_range(keys.jobs(trainer), keys.WORKER_GROUP, "-", "+", 10)
        assert pending["time_since_delivered"] > 10**8  # released: the reaper takes it at once
        assert files(study_dir / "0") == ["r3.pt"]  # the retry resumes from here
