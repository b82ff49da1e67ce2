"""Trainers: registration, default spaces, determinism, bit-identical resume, data errors.

Everything runs on the CPU on tiny data the tests write themselves (never a download), so the
real loading code is what is tested. The whole file should stay well under a minute.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hpod.server.algorithms.space import SearchSpace
from hpod.trainers import analytic
from hpod.trainers.base import DataError, Trainer, TrainerContext, get_trainer, load_all

CPU = "cpu"


def ctx(seed: int = 0, max_resource: float = 4, data_dir: str | None = None) -> TrainerContext:
    return TrainerContext(seed=seed, max_resource=max_resource, data_dir=data_dir, device=CPU)


def run(trainer: Trainer, r0: float, r1: float) -> list[tuple[float, float]]:
    return list(trainer.train(r0, r1))


def roundtrip(state: Mapping[str, Any]) -> Any:
    """Through bytes exactly as the worker does, with torch.load's safe default (weights_only):
    a state that needs arbitrary pickles would fail here, not in production."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


def params_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = getattr(trainer, "model", None)
    return {} if model is None else {k: v.clone() for k, v in model.state_dict().items()}


def assert_resume_identical(
    make: Callable[[], Trainer], split: int, end: int
) -> list[tuple[float, float]]:
    """train(0, end) in one go == train(0, split); save; new instance; load; train(split, end):
    the same metrics and the same parameters, bit for bit."""
    whole = make()
    full = run(whole, 0, end)
    first = make()
    head = run(first, 0, split)
    state = roundtrip(first.state_dict())
    second = make()
    second.load_state_dict(state)
    tail = run(second, split, end)
    assert head + tail == full
    a, b = params_of(whole), params_of(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return full


# ---------------------------------------------------------------- registry and spaces


def test_trainers_registered_with_valid_default_spaces() -> None:
    trainers = load_all()
    assert {"analytic", "mlp"} <= set(trainers)
    for name, cls in trainers.items():
        assert get_trainer(name) is cls
        space = SearchSpace.from_dict(cls.default_space())  # must not raise
        assert len(space) >= 1
        assert cls.direction in ("minimize", "maximize")
        assert cls.metric and cls.resource_unit


def test_unknown_trainer_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="analytic"):
        get_trainer("no-such-trainer")


@pytest.mark.parametrize("name", ["analytic", "mlp"])
def test_sampled_configs_train(name: str) -> None:
    cls = get_trainer(name)
    space = SearchSpace.from_dict(cls.default_space())
    rng = np.random.default_rng(0)
    for i in range(3):
        config = space.sample(rng)
        points = run(cls(config, ctx(seed=i)), 0, 1)
        assert [r for r, _ in points] == [1.0]
        assert all(math.isfinite(m) for _, m in points)


# ---------------------------------------------------------------- analytic


def test_analytic_function_optimum() -> None:
    space = SearchSpace.from_dict(analytic.AnalyticTrainer.default_space())
    rng = np.random.default_rng(1)
    for _ in range(2000):
        config = space.sample(rng)
        for r in (1, 3, 27, 243):
            assert analytic.value(config, r) >= analytic.optimum
    # Every Branin minimiser converges to the optimum; the curve term decays monotonically.
    for x1, x2 in analytic.BRANIN_ARGMINS:
        assert analytic.branin(x1, x2) == pytest.approx(analytic.optimum, abs=1e-5)
    curve = [analytic.value(analytic.argmin, r) for r in (1, 3, 9, 27, 81)]
    assert curve == sorted(curve, reverse=True)
    assert analytic.value(analytic.argmin, 1e9) == pytest.approx(analytic.optimum, abs=1e-3)
    space.validate_config(analytic.argmin)  # the documented argmin is inside the space


def test_analytic_curves_cross() -> None:
    """Low-fidelity rankings must be only a guide: some pair of configurations swaps order
    between 1 and 27 epochs (otherwise multi-fidelity would be trivially easy)."""
    space = SearchSpace.from_dict(analytic.AnalyticTrainer.default_space())
    rng = np.random.default_rng(2)
    configs = [space.sample(rng) for _ in range(50)]
    low = np.array([analytic.value(c, 1) for c in configs])
    high = np.array([analytic.value(c, 27) for c in configs])
    swapped = (low[:, None] < low[None, :]) & (high[:, None] > high[None, :])
    assert swapped.any()


def test_analytic_deterministic_and_seeded() -> None:
    config = {"x1": 1.0, "x2": 3.0, "lr": 0.05}
    a = run(analytic.AnalyticTrainer(config, ctx(seed=7)), 0, 5)
    b = run(analytic.AnalyticTrainer(config, ctx(seed=7)), 0, 5)
    c = run(analytic.AnalyticTrainer(config, ctx(seed=8)), 0, 5)
    assert a == b and a != c
    quiet = run(analytic.AnalyticTrainer({**config, "noise": 0.0}, ctx()), 0, 5)
    assert [m for _, m in quiet] == [analytic.value(config, r) for r in range(1, 6)]


def test_analytic_state_is_plain() -> None:
    t = analytic.AnalyticTrainer({}, ctx())
    run(t, 0, 2)
    assert t.state_dict() == {"epoch": 2}


# ---------------------------------------------------------------- resume, generic


@pytest.mark.parametrize(
    "name, config",
    [
        ("analytic", {}),
        ("mlp", {"width": 32}),
        ("mlp", {"width": 32, "optimizer": "adamw", "lr": 1e-3, "schedule": "onecycle"}),
    ],
)
def test_resume_is_bit_identical(name: str, config: dict[str, Any]) -> None:
    cls = get_trainer(name)
    assert_resume_identical(lambda: cls(config, ctx(seed=3, max_resource=3)), 1, 3)


def test_determinism_and_seed_dependence() -> None:
    cls = get_trainer("mlp")
    a = run(cls({"width": 32}, ctx(seed=1)), 0, 2)
    b = run(cls({"width": 32}, ctx(seed=1)), 0, 2)
    c = run(cls({"width": 32}, ctx(seed=2)), 0, 2)
    assert a == b
    assert a != c


def test_stopping_early_leaves_a_valid_state() -> None:
    """The worker may stop iterating after any yield; the state is then that of the last
    yielded step, and resuming from it matches an uninterrupted run."""
    cls = get_trainer("mlp")
    make = lambda: cls({"width": 32}, ctx(seed=4, max_resource=3))  # noqa: E731
    full = run(make(), 0, 3)
    t = make()
    it = t.train(0, 3)
    first = next(it)
    del it  # the worker abandons the generator
    state = roundtrip(t.state_dict())
    assert state["epoch"] == 1
    resumed = make()
    resumed.load_state_dict(state)
    assert [first, *run(resumed, 1, 3)] == full


def test_wrong_start_is_refused() -> None:
    t = get_trainer("mlp")({"width": 32}, ctx())
    with pytest.raises(ValueError, match="checkpoint"):
        run(t, 2, 3)
    with pytest.raises(ValueError, match="whole number"):
        run(t, 0, 1.5)


def test_unknown_config_key_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown configuration keys"):
        get_trainer("mlp")({"widht": 32}, ctx())


# ---------------------------------------------------------------- MLP


def test_mlp_learns_digits() -> None:
    t = get_trainer("mlp")({}, ctx(max_resource=5))
    points = run(t, 0, 5)
    assert [r for r, _ in points] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert t.dataset_name == "digits"
    assert points[-1][1] < 0.2  # chance is 0.9
    assert points[-1][1] < points[0][1]


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist(directory: Path, n: int = 60, gz: bool = False) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    # Separable toy images: a bright pixel block whose position is the label.
    images = rng.integers(0, 30, (n, 28, 28))
    for i, y in enumerate(labels):
        images[i, 2 * y:2 * y + 4, 5:20] = 250
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", labels, gz)


@pytest.mark.parametrize("sub, gz", [("", False), ("MNIST/raw", True)])
def test_mlp_reads_mnist_idx(tmp_path: Path, sub: str, gz: bool) -> None:
    write_mnist(tmp_path / sub, gz=gz)
    t = get_trainer("mlp")({"width": 32}, ctx(data_dir=str(tmp_path)))
    assert t.dataset_name == "mnist"
    assert t.x_train.shape == (50, 784) and t.x_val.shape == (10, 784)
    assert len(run(t, 0, 2)) == 2


def test_mlp_data_dir_without_mnist_falls_back_to_digits(tmp_path: Path) -> None:
    t = get_trainer("mlp")({"width": 32}, ctx(data_dir=str(tmp_path)))
    assert t.dataset_name == "digits"
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        get_trainer("mlp")({"dataset": "mnist"}, ctx(data_dir=str(tmp_path)))


def test_mlp_data_errors(tmp_path: Path) -> None:
    mlp = get_trainer("mlp")
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=str(missing)):
        mlp({}, ctx(data_dir=str(missing)))

    bad_magic = tmp_path / "bad_magic"
    write_mnist(bad_magic)
    (bad_magic / "train-images-idx3-ubyte").write_bytes(b"this is not an IDX file")
    with pytest.raises(DataError, match=r"bad_magic/train-images-idx3-ubyte.*magic"):
        mlp({}, ctx(data_dir=str(bad_magic)))

    truncated = tmp_path / "truncated"
    write_mnist(truncated)
    f = truncated / "train-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        mlp({}, ctx(data_dir=str(truncated)))

    half = tmp_path / "half"
    write_mnist(half)
    (half / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"half.*train-labels-idx1-ubyte"):
        mlp({}, ctx(data_dir=str(half)))

    mismatch = tmp_path / "mismatch"
    write_mnist(mismatch)
    write_idx(mismatch / "train-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(DataError, match="60 images but 7 labels"):
        mlp({}, ctx(data_dir=str(mismatch)))
