"""Trainers: registration, default spaces, determinism, bit-identical resume, data errors.

Everything runs on the CPU on tiny data the tests write themselves (never a download), so the
real loading code is what is tested. The whole file should stay well under a minute.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hpod.server.algorithms.space import SearchSpace
from hpod.trainers import analytic, data
from hpod.trainers.base import DataError, Trainer, TrainerContext, get_trainer, load_all

CPU = "cpu"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """These models are tiny: one intra-op thread is as fast as two, and it does not collapse
    when the machine is oversubscribed (spinning OpenMP threads on busy cores can make a step
    a hundred times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ctx(seed: int = 0, max_resource: float = 4, data_dir: str | None = None,
        settings: Mapping[str, Any] | None = None) -> TrainerContext:
    return TrainerContext(seed=seed, max_resource=max_resource, data_dir=data_dir, device=CPU,
                          settings=dict(settings or {}))


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
    the same metrics and the same parameters, bit for bit. And the same again when the first
    instance, after saving, simply goes on (a worker continuing the model it kept in memory)."""
    whole = make()
    full = run(whole, 0, end)
    first = make()
    head = run(first, 0, split)
    state = roundtrip(first.state_dict())
    second = make()
    second.load_state_dict(state)
    tail = run(second, split, end)
    assert head + tail == full
    warm = run(first, split, end)
    assert head + warm == full
    a = params_of(whole)
    for other in (second, first):
        b = params_of(other)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    return full


# ---------------------------------------------------------------- registry and spaces


def test_trainers_registered_with_valid_default_spaces() -> None:
    trainers = load_all()
    assert {"analytic", "mlp", "grokking", "mup_mlp", "densenet", "preact_resnet"} <= set(
        trainers
    )
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
        ("mlp", {"width": 32, "dropout": 0.3, "lr": 10.0}),  # the paper's: max-norm binds
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
    with pytest.raises(ValueError, match="unknown trainer_settings keys"):
        get_trainer("mlp")({}, ctx(settings={"widht": 32}))


def test_trainer_settings_fix_options_the_search_does_not() -> None:
    """trainer_settings overlay the defaults, the searched configuration overlays both; numbers
    may arrive as floats (protobuf Struct) and data_dir is the worker's, not an option."""
    mlp = get_trainer("mlp")
    t = mlp({"width": 48.0}, ctx(settings={"width": 64, "depth": 1.0, "data_dir": "/x"}))
    assert t.cfg["depth"] == 1.0 and t.cfg["width"] == 48.0  # type: ignore[attr-defined]
    assert t.model.hidden[0].out_features == 48  # type: ignore[attr-defined]
    assert len(run(t, 0, 1)) == 1


# ---------------------------------------------------------------- MLP


def test_mlp_learns_digits(caplog: pytest.LogCaptureFixture) -> None:
    """The paper recipe at a rate that suits the digits' 15 minibatches per epoch (epsilon = 10
    is MNIST's, with 600); and the trainer says it is not MNIST."""
    with caplog.at_level("WARNING"):
        t = get_trainer("mlp")({"lr": 1.0}, ctx(max_resource=8))
    assert "not MNIST" in caplog.text and "digits" in caplog.text
    points = run(t, 0, 8)
    assert [r for r, _ in points] == [float(e) for e in range(1, 9)]
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


# ---------------------------------------------------------------- CIFAR layout and augmentation


def write_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> Path:
    """The CIFAR-10 python layout in miniature: five pickled training batches."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 100, (per_batch, 3072), dtype=np.uint8)
        data[:, :1024] += np.array(labels, dtype=np.uint8)[:, None] * 15  # learnable: red = label
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
    return d


def write_cifar100(root: Path, n: int = 20) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with open(d / "train", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                     b"coarse_labels": [0] * n}, f)
    return d


def test_cifar_readers(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    c10 = data.load_cifar(str(tmp_path), "cifar10")
    assert c10.x_train.shape == (18, 3, 32, 32) and c10.x_train.dtype == torch.uint8
    assert c10.x_val.shape == (2, 3, 32, 32) and c10.num_classes == 10
    # Channel-major rows: the first 1024 bytes of a row are the red plane.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][0]
    assert torch.equal(c10.x_train[0, 0].flatten(), torch.from_numpy(row[:1024]))
    write_cifar100(tmp_path)
    c100 = data.load_cifar(str(tmp_path / "cifar-100-python"), "cifar100")
    assert c100.num_classes == 100 and len(c100.x_train) == 18


def test_cifar_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        data.load_cifar(str(tmp_path), "cifar10")
    d = write_cifar10(tmp_path / "missing")
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: file not found"):
        data.load_cifar(str(tmp_path / "missing"), "cifar10")
    d = write_cifar10(tmp_path / "garbage")
    (d / "data_batch_2").write_bytes(b"\x00not a pickle")
    with pytest.raises(DataError, match="data_batch_2: not a readable pickle"):
        data.load_cifar(str(tmp_path / "garbage"), "cifar10")
    d = write_cifar10(tmp_path / "keys")
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"images": b""}, f)
    with pytest.raises(DataError, match=r"data_batch_1: expected a dict with b'data'"):
        data.load_cifar(str(tmp_path / "keys"), "cifar10")
    d = write_cifar10(tmp_path / "shape")
    with open(d / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataError, match=r"data_batch_4: b'data' is uint8 of shape \(4, 1024\)"):
        data.load_cifar(str(tmp_path / "shape"), "cifar10")
    # The trainers say what they need when no data directory is given at all.
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        get_trainer("densenet")({}, ctx())


def test_crop_flip() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    centre = torch.full((2, 2), 2)
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    assert torch.equal(data.crop_flip(x, centre, no, pad=2), x)
    assert torch.equal(data.crop_flip(x, centre, yes, pad=2), x.flip(3))
    corner = data.crop_flip(x, torch.zeros(2, 2, dtype=torch.long), no, pad=2)
    assert torch.equal(corner[:, :, 2:, 2:], x[:, :, :3, :3])
    assert corner[:, :, :2].abs().sum() == 0  # zero padding came in from the top
    offsets, flips = data.draw_crop_flip(1000, torch.Generator().manual_seed(0))
    assert offsets.min() == 0 and offsets.max() == 8 and 400 < int(flips.sum()) < 600


# ---------------------------------------------------------------- the paper models, tiny

TINY: dict[str, dict[str, Any]] = {
    "densenet": {"depth": 10, "growth_rate": 4, "batch_size": 8},
    "preact_resnet": {"depth": 8, "block": "basic", "batch_size": 8},
    "grokking": {"p": 11, "width": 16, "heads": 2, "layers": 1, "operation": "x+y"},
    "mup_mlp": {"width": 32, "depth": 2},
}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return str(root)


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_resume_is_bit_identical(name: str, cifar_dir: str) -> None:
    cls = get_trainer(name)
    full = assert_resume_identical(
        lambda: cls({}, ctx(seed=5, max_resource=3, data_dir=cifar_dir, settings=TINY[name])),
        1, 3,
    )
    assert [r for r, _ in full] == [1.0, 2.0, 3.0]
    assert all(math.isfinite(m) for _, m in full)


@pytest.mark.parametrize("name, extra", [
    # Tiny batches of 8 make SGD at CIFAR rates erratic; AdamW shows the descent in 18 steps.
    ("densenet", {"augment": False, "optimizer": "adamw", "lr": 0.03, "schedule": "constant"}),
    ("preact_resnet", {"augment": False, "optimizer": "adamw", "lr": 3e-3,
                       "schedule": "constant", "warmup_steps": 0}),
    ("preact_resnet", {"depth": 11, "block": "bottleneck", "augment": False,
                       "optimizer": "adamw", "lr": 3e-3, "schedule": "constant",
                       "warmup_steps": 0}),
    ("grokking", {"lr": 3e-3, "weight_decay": 0.1}),
    ("mup_mlp", {}),
])
def test_model_loss_goes_down(name: str, extra: dict[str, Any], cifar_dir: str) -> None:
    t = get_trainer(name)({}, ctx(seed=0, max_resource=6, data_dir=cifar_dir,
                                  settings={**TINY[name], **extra}))
    losses = []
    for _ in t.train(0, 1):
        losses.append(t.last_train_loss)  # type: ignore[attr-defined]
    for _ in t.train(1, 6):
        losses.append(t.last_train_loss)  # type: ignore[attr-defined]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    assert t.samples_seen > 0  # type: ignore[attr-defined]


def test_default_models_build() -> None:
    """The documented defaults: DenseNet-BC L=100 k=12 has 0.8 M parameters, pre-act
    ResNet-164 1.7 M (the papers' tables)."""
    from hpod.trainers.densenet import DenseNetBC
    from hpod.trainers.preact_resnet import PreActResNet

    def count(m: torch.nn.Module) -> float:
        return sum(p.numel() for p in m.parameters()) / 1e6

    assert count(DenseNetBC(100, 12)) == pytest.approx(0.8, abs=0.05)
    assert count(PreActResNet(164, "bottleneck")) == pytest.approx(1.7, abs=0.05)
    assert count(PreActResNet(110, "basic")) == pytest.approx(1.7, abs=0.05)
    with pytest.raises(ValueError, match="6n\\+4"):
        DenseNetBC(50, 12)


def test_grokking_tables() -> None:
    from hpod.trainers.grokking import OPERATIONS, make_table

    for op, (_, nonzero) in OPERATIONS.items():
        inputs, targets = make_table(op, 7, 0)
        assert len(inputs) == 7 * (6 if nonzero else 7) and inputs.shape[1] == 6
        # <eos> x op y = z, and the same shifted by one with the closing <eos>
        assert (inputs[:, 0] == 9).all() and (inputs[:, 2] == 7).all()
        assert (inputs[:, 4] == 8).all() and (targets[:, 5] == 9).all()
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert int(targets[:, 4].min()) >= 0 and int(targets[:, 4].max()) < 7
    inputs, targets = make_table("x/y", 13, 0)
    assert ((targets[:, 4] * inputs[:, 3]) % 13 == inputs[:, 1]).all()  # division inverts
    with pytest.raises(ValueError, match="prime"):
        make_table("x+y", 12, 0)


def test_grokking_splits_are_nested_and_disjoint() -> None:
    cls = get_trainer("grokking")
    small = cls({}, ctx(settings={**TINY["grokking"], "train_fraction": 0.3}))
    big = cls({}, ctx(settings={**TINY["grokking"], "train_fraction": 0.6}))
    assert torch.equal(big.x_train[:len(small.x_train)], small.x_train)
    train = {tuple(r) for r in big.x_train.tolist()}
    assert not train & {tuple(r) for r in big.x_val.tolist()}


def best_lr(width: int, parameterization: str) -> float:
    """The learning rate with the lowest training loss after 2 epochs on digits, refined
    between grid points by a parabola through the best point and its neighbours (log2 lr)."""
    lrs = [1e-3 * 2**k for k in range(10)]
    losses = []
    for lr in lrs:
        t = get_trainer("mup_mlp")(
            {"lr": lr, "width": width, "parameterization": parameterization},
            ctx(seed=0, max_resource=2, settings={"recipe": "modern", "depth": 2,
                                                  "schedule": "constant", "dataset": "digits"}))
        run(t, 0, 2)
        losses.append(t.last_train_loss)  # type: ignore[attr-defined]
    b = int(np.argmin(losses))
    if 0 < b < len(lrs) - 1:
        y0, y1, y2 = losses[b - 1:b + 2]
        return float(lrs[b] * 2 ** (0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)))
    return lrs[b]


def test_mup_learning_rate_transfers_across_widths() -> None:
    """What muP exists for: widening 32 -> 512 moves the best learning rate by less than a
    factor of 2, while in the standard parameterisation it moves much more."""
    mup = best_lr(512, "mup") / best_lr(32, "mup")
    sp = best_lr(512, "sp") / best_lr(32, "sp")
    assert 0.5 < mup < 2.0, mup
    assert sp < 0.25, sp  # SP wants a much smaller rate when wide


def test_throughput_measurement() -> None:
    from hpod.trainers.throughput import measure

    mlp = measure("mlp", {"width": 32}, units=1)
    assert mlp.samples_per_second > 0 and mlp.seconds_per_unit > 0
    assert mlp.flops_per_unit and mlp.flops_per_unit > 0 and mlp.achieved_flops
    cnn = measure("preact_resnet", settings={"depth": 8, "block": "basic", "batch_size": 16},
                  units=1, synthetic_images=50)
    assert cnn.resource_unit == "epoch" and cnn.samples_per_second > 0
