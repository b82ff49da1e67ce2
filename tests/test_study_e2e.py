"""A study driven through the SDK with real worker processes, a real server and Redis."""

from __future__ import annotations

import math

import pytest
from hpod.client import Client
from hpod.client.local import LocalCluster


def hyperband_spec(trainer: str = "analytic", max_resource: float = 9, **extra) -> dict:
    return {"name": "e2e", "trainer": trainer, "resource": {"max_resource": max_resource,
                                                            "eta": 3},
            "algorithm": {"name": "hyperband"}, "seed": 7, **extra}


def test_hyperband_study_completes_with_two_workers(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        study = client.create_study(hyperband_spec())
        plan = study.info.plan
        assert [len(b.rungs) for b in plan.brackets] == [3, 2, 1]
        info = study.wait(timeout=120)
        assert info.state == 2  # COMPLETED
        trials = study.trials()
        assert len(trials) == plan.max_trials == 17
        assert all(t.state == "completed" for t in trials)

        # The best trial is the one the algorithm says: the lowest value at max resource.
        at_r = [t for t in trials if t.resource == 9]
        expected = min(at_r, key=lambda t: (t.value, t.id))
        best = study.best_trial()
        assert best is not None and best.id == expected.id
        assert info.best_trial.id == expected.id


def test_promotion_resumes_instead_of_retraining(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        study = client.create_study(hyperband_spec(seed=11))
        info = study.wait(timeout=120)
        # Resource trained = sum of per-rung increments (resume), not sum of full rungs.
        assert info.resource_used == pytest.approx(info.plan.incremental_resource)
        assert info.plan.incremental_resource < info.plan.total_resource
        for t in study.trials():
            # One point per epoch, in order, none repeated: no segment retrained from zero.
            assert [r for r, _ in t.curve] == list(range(1, int(t.resource) + 1))


def test_real_torch_mlp_study_resumes_from_checkpoints(cluster: LocalCluster) -> None:
    spec = hyperband_spec("mlp", max_resource=3, objective={"metric": "val_error"})
    # The modern recipe (Adam-style): the paper's SGD at lr 10 is tuned for MNIST's 600
    # batches an epoch, and barely moves in 3 epochs of 8x8 digits.
    spec["trainer_settings"] = {"recipe": "modern"}
    with cluster.client() as client:
        study = client.create_study(spec)
        info = study.wait(timeout=300)
        trials = study.trials()
        assert info.state == 2 and len(trials) == info.plan.max_trials
        promoted = [t for t in trials if t.resource == 3 and t.bracket == 1]
        assert promoted, "bracket s=1 promotes one trial from 1 to 3 epochs"
        for t in promoted:
            assert [r for r, _ in t.curve] == [1.0, 2.0, 3.0]
        values = [t.value for t in trials]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
        assert min(values) < 0.5  # it learns: chance on 10 digit classes is 0.9
        assert info.cost_used > 0  # device seconds measured by the workers


def test_watch_streams_trial_events_until_the_end(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        study = client.create_study({**hyperband_spec(max_resource=3), "seed": 3})
        kinds = [ev.kind for ev in study.watch(include_progress=True)]
        assert kinds[-1] == "study_ended"
        for kind in ("created", "progress", "paused", "promoted", "completed"):
            assert kind in kinds


def test_study_list_show_and_plan_through_the_cli(cluster: LocalCluster, tmp_path) -> None:
    import json
    import subprocess
    import sys

    spec = tmp_path / "study.yaml"
    spec.write_text("trainer: analytic\nresource: {max_resource: 3, eta: 3}\n"
                    "algorithm: {name: hyperband}\nseed: 5\n")
    run = [sys.executable, "-m", "hpod.client.cli"]
    sid = subprocess.run([*run, "study", "create", str(spec), "--address", cluster.address],
                         check=True, capture_output=True, text=True).stdout.strip()
    with Client(cluster.address) as client:
        client.study(sid).wait(timeout=60)
    out = subprocess.run([*run, "study", "best", sid, "--json", "--address", cluster.address],
                         check=True, capture_output=True, text=True).stdout
    assert json.loads(out)["resource"] == 3
    listing = subprocess.run([*run, "study", "list", "--address", cluster.address],
                             check=True, capture_output=True, text=True).stdout
    assert sid in listing
