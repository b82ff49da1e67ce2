"""Bring your own trainer: a Trainer class or a plain function from a module outside hpod,
found by ``module:attribute`` or an ``hpod.trainers`` entry point, run by real worker processes
through a real server, with promotions resumed from their own checkpoints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from helpers import wait_for
from hpod.client.local import LocalCluster
from hpod.server.store import keys
from hpod.trainers import base
from hpod.trainers.base import UnknownTrainer, available, get_trainer
from hpod.trainers.checkpoints import prune_study_checkpoints
from hpod.trainers.function import FunctionTrainer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "byo"

MODULE = textwrap.dedent('''
    from hpod.trainers.base import Trainer

    class Good(Trainer):
        name = "good"
        @classmethod
        def default_space(cls):
            return [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}]
        def __init__(self, config, ctx): self.r = 0
        def train(self, r0, r1):
            yield r1, 0.0
        def state_dict(self): return {}
        def load_state_dict(self, state): pass

    class NotATrainer:
        pass

    def fit(config, ctx):
        ctx.report(ctx.to_resource, 1.0)

    fit.search_space = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    fit.metric = "acc"
    fit.direction = "maximize"

    NUMBER = 3
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    name = f"user_trainers_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# ---------------------------------------------------------------- finding trainers


def test_a_class_by_module_and_attribute(user_module: str) -> None:
    cls = get_trainer(f"{user_module}:Good")
    assert cls.__name__ == "Good" and not issubclass(cls, FunctionTrainer)
    assert get_trainer(f"{user_module}:Good") is cls  # resolved once


def test_a_function_is_wrapped_with_its_declared_attributes(user_module: str) -> None:
    cls = get_trainer(f"{user_module}:fit")
    assert issubclass(cls, FunctionTrainer)
    assert cls.name == f"{user_module}:fit"
    assert (cls.metric, cls.direction, cls.resource_unit) == ("acc", "maximize", "epoch")
    assert cls.default_space() == {"x": {"type": "float", "low": 0.0, "high": 1.0}}


@pytest.mark.parametrize("attr, message", [
    ("Missing", "has no attribute 'Missing'"),
    ("NotATrainer", "class without"),
    ("NUMBER", "not a Trainer subclass or a function"),
])
def test_bad_attributes_say_what_is_wrong(user_module: str, attr: str, message: str) -> None:
    with pytest.raises((UnknownTrainer, TypeError), match=message):
        get_trainer(f"{user_module}:{attr}")


def test_unknown_names_list_the_forms_that_work() -> None:
    with pytest.raises(UnknownTrainer, match="no module 'no_such_pkg.models'"):
        get_trainer("no_such_pkg.models:Model")
    with pytest.raises(KeyError) as e:
        get_trainer("nonesuch")
    text = str(e.value)
    assert "analytic" in text and "module:attribute" in text and "entry points" in text


def test_an_entry_point_of_an_installed_package(user_module: str, tmp_path) -> None:
    dist = tmp_path / "user_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: user-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[hpod.trainers]\nmy-model = {user_module}:Good\nmy-loop = {user_module}:fit\n")
    assert {"my-model", "my-loop", "analytic"} <= set(available())
    assert get_trainer("my-model").__name__ == "Good"
    assert issubclass(get_trainer("my-loop"), FunctionTrainer)
    base._RESOLVED.pop("my-model")
    base._RESOLVED.pop("my-loop")


def test_the_worker_imports_only_the_trainers_it_is_asked_for() -> None:
    code = textwrap.dedent("""
        import sys
        import hpod.trainers.worker
        from hpod.trainers.base import available, get_trainer
        assert "analytic" in available()
        get_trainer("analytic")
        loaded = sorted(m for m in sys.modules if m.startswith("hpod.trainers."))
        print(loaded, "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    for module in ("mlp", "data", "scaling", "throughput", "healthcheck", "_common"):
        assert f"hpod.trainers.{module}'" not in out
    assert "hpod.trainers.analytic'" in out
    assert out.strip().endswith("False")  # no torch


# ---------------------------------------------------------------- end to end


def assert_resumed_and_clean(study, info, ckpt: Path) -> None:
    """Completed, every promotion resumed (one point per epoch, each segment paid once), and
    each trial left with exactly its newest checkpoint."""
    assert info.state == 2, info  # COMPLETED
    trials = study.trials()
    assert len(trials) == info.plan.max_trials
    assert {t.state for t in trials} == {"completed"}, [t.error for t in trials if t.error]
    assert any(t.resource == 9 and t.bracket == 2 for t in trials), "a trial promoted 1->3->9"
    for t in trials:
        assert [r for r, _ in t.curve] == list(range(1, int(t.resource) + 1))
    assert info.resource_used == pytest.approx(info.plan.incremental_resource)
    for t in trials:
        folder = ckpt / study.id / str(t.id)
        assert sorted(p.name for p in folder.iterdir()) == [f"r{t.resource:.6g}.pt"], t.id
    best = study.best_trial()
    freed, kept = prune_study_checkpoints(ckpt, study.id, [best.id])
    assert freed > 0 and kept > 0
    assert [p.parent.name for p in (ckpt / study.id).rglob("*.pt")] == [str(best.id)]


@pytest.mark.slow
def test_user_class_and_function_trainers_run_hyperband_end_to_end(tmp_path,
                                                                   monkeypatch) -> None:
    code = tmp_path / "user_code"  # outside the package, on the workers' PYTHONPATH only
    code.mkdir()
    for f in ("my_models.py", "my_loop.py"):
        shutil.copy(EXAMPLES / f, code / f)
    monkeypatch.setenv("PYTHONPATH", str(code))
    # Superseded checkpoints go at once (not after the grace a Redis losing its last second
    # of writes needs), so the end state below is the life cycle's.
    monkeypatch.setenv("HPOD_CHECKPOINT_GRACE_SECONDS", "0")
    monkeypatch.syspath_prepend(str(code))  # the client reads the function's search_space
    trainers = ("my_models:LogisticTrainer", "my_loop:train")
    spec = {"resource": {"max_resource": 9, "eta": 3}, "algorithm": {"name": "hyperband"},
            "seed": 3}
    # --keep-models 0: every continuation reads its checkpoint, none continues in memory.
    # The server's own pruning at a study's end is off here ("--checkpoint-dir" ""), so the
    # workers' life cycle alone is seen (tests/test_runtime.py covers the server's).
    with LocalCluster(workers=2, trainers=trainers, workdir=str(tmp_path / "c"),
                      worker_args=("--keep-models", "0"),
                      server_args=("--checkpoint-dir", "")) as cluster, \
            cluster.client() as client:
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        # The server accepts a study for a trainer that is not built in only once a worker
        # declares it: wait for both workers to register (slow on a loaded machine).
        wait_for(lambda: len([w for w in r.zrange(keys.workers(), 0, -1)
                              if r.hget(keys.worker(w), "trainers")]) == 2,
                 timeout=120, what="both workers registered")
        studies = [
            client.create_study({**spec, "name": "class", "trainer": trainers[0],
                                 "objective": {"metric": "val_loss"}}),
            client.create_study({**spec, "name": "function", "trainer": trainers[1],
                                 "objective": {"metric": "val_mse"}}),
        ]
        infos = [s.wait(timeout=300) for s in studies]
        registered = {r.hget(keys.worker(w), "trainers") for w in r.zrange(keys.workers(), 0, -1)}
        assert registered == {",".join(trainers)}
        ckpt = cluster.workdir / "checkpoints"
        for study, info in zip(studies, infos, strict=True):
            assert_resumed_and_clean(study, info, ckpt)
        # The function study used the function's own default search space.
        assert {p.name for p in studies[1].info.spec.search_space} == {"lr", "momentum"}


# ---------------------------------------------------------------- the function's context


def context(tmp_path, r0: float = 0.0, r1: float = 3.0, stop_at: float | None = None):
    from hpod.trainers.function import JobContext

    job = {"study_id": "s", "job_id": "s-j1", "trial_id": 7, "from_resource": r0,
           "to_resource": r1, "max_resource": 9.0, "seed": 11, "trainer_settings": {"k": 1}}
    sent: list[tuple[float, float]] = []

    def report(resource: float, value: float) -> bool:
        sent.append((resource, value))
        return stop_at is not None and resource >= stop_at

    return JobContext(job, tmp_path, report, device=lambda: "cpu"), sent


def test_context_reports_saves_and_loads_through_the_checkpoint_dir(tmp_path) -> None:
    ctx, sent = context(tmp_path)
    assert ctx.load() is None and list(ctx.steps()) == [1, 2, 3]
    assert ctx.settings == {"k": 1} and ctx.seed == 11 and ctx.max_resource == 9.0
    with pytest.raises(RuntimeError, match="report first"):
        ctx.save({"w": 0})
    assert ctx.report(1, 0.5) is False
    ctx.save({"w": 1})
    assert ctx.report(2, 0.4) is False
    ctx.save({"w": 2})  # replaces this segment's earlier save
    assert sent == [(1.0, 0.5), (2.0, 0.4)]
    assert sorted(p.name for p in (tmp_path / "s" / "7").iterdir()) == ["r2.pt"]
    later, _ = context(tmp_path, r0=2.0, r1=6.0)
    assert later.load() == {"w": 2} and list(later.steps()) == [3, 4, 5, 6]
    missing, _ = context(tmp_path, r0=3.0, r1=9.0)
    with pytest.raises(FileNotFoundError, match="did not call ctx.save"):
        missing.load()


def test_context_refuses_bad_reports_and_goes_quiet_after_a_stop(tmp_path) -> None:
    ctx, sent = context(tmp_path, stop_at=2.0)
    for bad in ((0, 1.0), (4, 1.0), (1, float("nan"))):
        with pytest.raises(ValueError):
            ctx.report(*bad)
    assert ctx.report(1, 1.0) is False
    with pytest.raises(ValueError, match="above 1"):
        ctx.report(1, 0.9)  # resources must increase
    assert ctx.report(2, 0.8) is True  # the algorithm stopped the trial
    assert ctx.report(3, 0.7) is True  # ... and nothing more goes out
    ctx.save({"w": 3})  # nothing resumes a stopped trial: not written
    assert sent == [(1.0, 1.0), (2.0, 0.8)]
    assert not (tmp_path / "s" / "7").exists()
