"""CQR through the real service: the same seed gives the same
suggestions twice in a row and across a server restart mid-study; with 4 concurrent workers no
two trials share a configuration.

The determinism tests drive the study with the ask/tell RPCs and compute the analytic
trainer's function (``hpod.trainers.analytic.value``) in the test: one client asking, reporting
and completing in a fixed order is one fixed sequence of engine inputs. With trainer workers the
order of an ask against another job's completion depends on timing (the server's dispatch and
event loops run independently), so two runs legitimately differ there; determinism is a
property of the input sequence, which is what these tests pin down.
"""

from __future__ import annotations

from typing import Any

import pytest
from hpod.client.local import LocalCluster
from hpod.client.sdk import Client, HpodError, Study
from hpod.trainers import analytic

SPACE = [
    {"name": "x1", "type": "float", "low": -5.0, "high": 10.0},
    {"name": "x2", "type": "float", "low": 0.0, "high": 15.0},
    {"name": "lr", "type": "float", "low": 1e-4, "high": 1.0, "log": True},
]
# Small models and few candidates keep each suggestion well under a second; the start-up phase
# is short so that most suggestions come from the fitted model, not from random draws.
CQR = {"num_candidates": 300, "n_estimators": 30, "num_init_random_draws": 3}
MAX_TRIALS = {"cqr": 8, "asha-cqr": 10}


def ask_tell_spec(algorithm: str, seed: int = 11) -> dict[str, Any]:
    return {"name": f"det-{algorithm}", "objective": {"metric": "loss", "direction": "minimize"},
            "resource": {"name": "epoch", "max_resource": 9, "min_resource": 1, "eta": 3},
            "algorithm": {"name": algorithm, "settings": {"cqr": CQR}}, "seed": seed,
            "max_trials": MAX_TRIALS[algorithm], "search_space": SPACE}


Handed = list[tuple[int, float, float, tuple[tuple[str, Any], ...]]]


def drive(cluster: LocalCluster, client: Client, algorithm: str,
          restart_at_job: int | None = None) -> tuple[Handed, list[tuple]]:
    """Run one ask/tell study to its end; with ``restart_at_job``, kill the server in the middle
    of that job (after its first reported point) and go on against a fresh server process."""
    study: Study = client.create_study(ask_tell_spec(algorithm))
    handed: Handed = []
    n = 0
    while (job := study.ask(poll=0.05)) is not None:
        handed.append((job.trial_id, job.from_resource, job.to_resource,
                       tuple(sorted(job.config.items()))))
        r, v = job.from_resource, 0.0
        for step in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
            r, v = float(step), analytic.value(job.config, step)
            stop = job.report(r, v)
            if n == restart_at_job:
                # Killed, not stopped: the server gets no chance to flush anything.
                assert cluster.server is not None
                cluster.server.kill()
                cluster.server.wait()
                try:
                    cluster.start_server()
                except HpodError:
                    # A loaded machine: the replay (CQR refits) or gRPC's reconnect backoff can
                    # outlast start_server's 60 s; the process is up, so give it longer.
                    with cluster.client() as probe:
                        probe.wait_ready(120)
                # A new channel: the old one may sit in its reconnect backoff for a second.
                client = cluster.client()
                job.study = study = client.study(study.id)
                restart_at_job = None
            if stop:
                break
        job.complete(v, r)
        n += 1
    info = study.wait(timeout=30)
    assert info.state == 2  # done
    assert n > (restart_at_job or 0)
    trials = sorted((t.id, t.resource, round(t.value, 12), tuple(sorted(t.config.items())))
                    for t in study.trials(curves=False))
    return handed, trials


@pytest.mark.parametrize("algorithm", ["cqr", "asha-cqr"])
def test_same_seed_same_suggestions_twice_and_across_a_server_restart(
        tmp_path, algorithm: str) -> None:
    with LocalCluster(workers=0, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=30.0) as c:
        # The restarted run first: a starting server replays every study in Redis, finished
        # ones included, so later studies would only slow the restart down.
        # Mid-study: after the start-up phase, so the restarted server must rebuild a fitted
        # model (and its random streams) from the snapshot and the log to suggest the same.
        restarted = drive(c, c.client(), algorithm, restart_at_job=MAX_TRIALS[algorithm] // 2)
        with c.client() as client:
            first = drive(c, client, algorithm)
            second = drive(c, client, algorithm)
    handed, trials = first
    assert len(trials) == MAX_TRIALS[algorithm]
    assert len({cfg for *_, cfg in handed}) == len(trials)  # every trial its own config
    assert second == first
    assert restarted == first


@pytest.mark.parametrize("algorithm", ["cqr", "asha-cqr"])
def test_four_concurrent_workers_never_share_a_configuration(tmp_path, algorithm: str) -> None:
    spec = {"trainer": "analytic", "seed": 3, "max_trials": 16,
            "resource": {"max_resource": 9, "eta": 3},
            # A short pause per epoch so that the four workers' jobs overlap.
            "trainer_settings": {"step_seconds": 0.02},
            "algorithm": {"name": algorithm, "settings": {"cqr": CQR}}}
    with LocalCluster(workers=4, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=5.0) as c, c.client() as client:
        study = client.create_study(spec)
        info = study.wait(timeout=120)
        trials = study.trials(curves=False)
    assert info.state == 2 and len(trials) == 16
    configs = [tuple(sorted(t.config.items())) for t in trials]
    assert len(set(configs)) == len(configs)
