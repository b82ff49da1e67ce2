"""Operations: a worker drains on SIGTERM and its job moves on at once; the metrics
endpoint serves the study's numbers while it runs."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
import redis
from helpers import wait_for
from hpod.client.local import LocalCluster
from hpod.server.store.embedded import free_port
from test_faults import assert_nothing_lost_or_doubled, busy_worker_pid, slow_spec


def test_sigterm_to_a_worker_hands_its_job_on_at_once(tmp_path) -> None:
    # A lease far longer than the test: the job can only move on this fast if the worker
    # released it.
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=60.0) as cluster, cluster.client() as client:
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        # Random search: every job is one 9-step segment, so SIGTERM lands mid-segment.
        study = client.create_study({**slow_spec(seed=4), "algorithm": {"name": "random"},
                                     "max_trials": 4})
        wait_for(lambda: busy_worker_pid(r) is not None, what="a busy worker")
        pid = busy_worker_pid(r)
        proc = next(p for p in cluster.workers if p.pid == pid)
        sent = time.time()
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(40) == 0  # drained: it stopped at a step and let the job go
        # Handed on well inside the lease (60 s): only a released job moves that soon.
        wait_for(lambda: sum(t.lost_jobs for t in study.trials()) >= 1, timeout=40,
                 what="the released job handed on")
        assert time.time() - sent < 50
        info = study.wait(timeout=120)
        assert info.state == 2
        assert_nothing_lost_or_doubled(study, info)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_metrics_endpoint_during_a_running_study(tmp_path) -> None:
    pytest.importorskip("prometheus_client")
    port = free_port()
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path),
                      server_args=("--metrics-port", str(port))) as cluster, \
            cluster.client() as client:
        study = client.create_study(slow_spec(seed=5))
        wait_for(lambda: study.refresh().trials_finished >= 2, what="two finished trials")
        wait_for(lambda: 'hpod_workers{status="busy"}' in scrape(port), timeout=60,
                 what="worker gauges")
        text = scrape(port)
        for needle in ('hpod_studies{state="active"} 1.0', 'hpod_trials{state="completed"}',
                       'hpod_jobs{state="leased"}', 'hpod_jobs{state="queued"}',
                       "hpod_events_applied_total", "hpod_lease_expiries_total",
                       'hpod_rpc_seconds_bucket{le="0.005",method="CreateStudy"}',
                       'hpod_rpcs_total{code="OK",method="GetStudy"}',
                       "hpod_worker_utilisation", "hpod_watches"):
            assert needle in text, needle
        applied = [ln for ln in text.splitlines() if ln.startswith("hpod_events_applied_total")]
        assert float(applied[0].split()[-1]) > 0
        study.stop()


def test_json_logs_carry_ids_as_fields() -> None:
    import json
    import logging

    from hpod.server.logs import JsonFormatter

    record = logging.LogRecord("hpod.server", logging.WARNING, __file__, 1,
                               "job %s lost with its worker", ("s1-j2",), None)
    record.study_id, record.job_id, record.trial_id = "s1", "s1-j2", 7
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "job s1-j2 lost with its worker"
    assert (out["study_id"], out["job_id"], out["trial_id"], out["level"]) == \
        ("s1", "s1-j2", 7, "warning")
