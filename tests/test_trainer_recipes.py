"""The trainers' ``recipe: paper`` against the papers and the authors' code: parameter counts,
the pre-act bottleneck's stride, the step schedule, max-norm binding, muP's readout and the
SP/muP difference, the grokking transformer's architecture and task settings, and checkpoints
that move between device kinds. CPU only, tiny models, each test a few seconds at most."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hpod.trainers import _cifar
from hpod.trainers._common import CPU_GENERATOR_STATE, StepSeeded, lr_factor
from hpod.trainers.base import Trainer, TrainerContext, get_trainer
from hpod.trainers.densenet import DenseNetBC, Transition
from hpod.trainers.grokking import GrokTransformer, sinusoidal
from hpod.trainers.mup_mlp import MuMLP
from hpod.trainers.preact_resnet import PreActBottleneck, PreActResNet
from test_trainers import assert_resume_identical, roundtrip, write_cifar10


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ctx(seed: int = 0, max_resource: float = 4, data_dir: str | None = None,
        settings: Mapping[str, Any] | None = None) -> TrainerContext:
    return TrainerContext(seed=seed, max_resource=max_resource, data_dir=data_dir, device="cpu",
                          settings=dict(settings or {}))


def millions(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=10)  # 45 training, 5 validation images
    return str(root)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("depth, growth, paper", [(100, 12, 0.8), (250, 24, 15.3),
                                                  (190, 40, 25.6)])
def test_densenet_bc_parameters_match_the_papers_table(depth: int, growth: int,
                                                        paper: float) -> None:
    """Huang et al. 2017, Table 2 (DenseNet-BC rows)."""
    assert millions(DenseNetBC(depth, growth)) == pytest.approx(paper, abs=0.05)


@pytest.mark.parametrize("depth, block, paper", [
    (164, "bottleneck", 1.7), (1001, "bottleneck", 10.2),  # He et al. 2016b, Table 2
    (20, "basic", 0.27), (32, "basic", 0.46), (44, "basic", 0.66), (56, "basic", 0.85),
    (110, "basic", 1.7),  # He et al. 2015, Table 6 (parameter-free option-A shortcuts)
])
def test_preact_resnet_parameters_match_the_papers_tables(depth: int, block: str,
                                                          paper: float) -> None:
    # Within 2 %: the tables round to two digits (ResNet-1001 counts 10.33 M here, as in
    # other faithful re-implementations of resnet-pre-act.lua).
    assert millions(PreActResNet(depth, block)) == pytest.approx(paper, rel=0.02, abs=0.006)


def test_option_a_shortcuts_have_no_parameters() -> None:
    pad = millions(PreActResNet(20, "basic", shortcut="pad"))
    projection = millions(PreActResNet(20, "basic", shortcut="projection"))
    assert projection - pad == pytest.approx((16 * 32 + 32 * 64) / 1e6)


# ---------------------------------------------------------------- architecture details


def test_preact_bottleneck_strides_on_the_first_1x1() -> None:
    """resnet-pre-act.lua: a unit that changes the shape has its stride on the first 1x1
    convolution (and the projection), not on the 3x3."""
    net = PreActResNet(11, "bottleneck")
    first_of_stage2 = net.units[1]
    assert isinstance(first_of_stage2, PreActBottleneck)
    assert first_of_stage2.conv1.stride == (2, 2) and first_of_stage2.conv1.kernel_size == (1, 1)
    assert first_of_stage2.conv2.stride == (1, 1)
    assert first_of_stage2.shortcut is not None and first_of_stage2.shortcut.stride == (2, 2)
    seen: dict[str, tuple[int, ...]] = {}

    def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        seen["conv1"] = tuple(output.shape)

    first_of_stage2.conv1.register_forward_hook(record)
    net(torch.zeros(1, 3, 32, 32))
    assert seen["conv1"] == (1, 32, 16, 16)  # already downsampled after the 1x1
    v15 = PreActResNet(11, "bottleneck", stride_on="3x3").units[1]
    assert v15.conv1.stride == (1, 1) and v15.conv2.stride == (2, 2)


def test_densenet_dropout_only_without_augmentation(cifar_dir: str) -> None:
    """Huang et al. Sec. 4.2: dropout 0.2 after every convolution but the first, for the
    runs without data augmentation."""
    tiny = {"depth": 10, "growth_rate": 4, "batch_size": 8}
    dn = get_trainer("densenet")
    plain = dn({}, ctx(data_dir=cifar_dir, settings={**tiny, "augment": False}))
    drops = [m for m in plain.model.modules() if type(m).__name__ == "GenDropout"]
    assert len(drops) == 2 * 1 * 3 + 2 and all(d.p == 0.2 for d in drops)
    assert isinstance(plain.model.features[0], torch.nn.Conv2d)  # the stem: no dropout after
    assert any(isinstance(m, Transition) and type(m.drop).__name__ == "GenDropout"
               for m in plain.model.modules())
    augmented = dn({}, ctx(data_dir=cifar_dir, settings=tiny))
    assert not [m for m in augmented.model.modules() if type(m).__name__ == "GenDropout"]
    assert plain.cfg["nesterov"] is True  # the paper: Nesterov momentum


def test_grokking_paper_architecture() -> None:
    """openai/grok transformer.py: post-LN, ReLU, sinusoidal positions, no biases in linear
    layers, no final LN; about 4e5 non-embedding parameters (the paper, App. A.1)."""
    g = torch.Generator()
    paper = GrokTransformer(97, 128, 2, 4, 0.0, g)
    linears = [m for m in paper.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None for m in linears)
    assert isinstance(paper.blocks[0].mlp[1], torch.nn.ReLU) and not paper.blocks[0].pre
    assert isinstance(paper.ln, torch.nn.Identity) and paper.pos is None
    non_embedding = sum(p.numel() for n, p in paper.named_parameters()
                        if not n.startswith(("tok", "head")))
    assert non_embedding == pytest.approx(4e5, rel=0.02)
    pe = sinusoidal(6, 8)
    assert pe[3, 2] == pytest.approx(math.sin(3 / 10000 ** (2 / 8)))
    assert pe[3, 3] == pytest.approx(math.cos(3 / 10000 ** (2 / 8)))
    modern = get_trainer("grokking")({}, ctx(settings={"recipe": "modern", "p": 11,
                                                       "width": 16, "heads": 2})).model
    assert modern.blocks[0].pre and modern.pos is not None
    assert isinstance(modern.blocks[0].mlp[1], torch.nn.GELU)
    assert modern.head.bias is not None


def test_grokking_task_is_a_setting_not_a_search_dimension() -> None:
    cls = get_trainer("grokking")
    assert not {d["name"] for d in cls.default_space()} & {"train_fraction", "p", "operation"}
    with pytest.raises(ValueError, match="train_fraction.*trainer_settings"):
        cls({"train_fraction": 0.8}, ctx(settings={"p": 11}))


def test_grokking_batches_walk_through_epochs() -> None:
    """grok/data.py's iterator: each epoch a fresh shuffle, cut into consecutive batches of
    min(512, ceil(n/2)) (the last smaller), never spanning two epochs."""
    t = get_trainer("grokking")({}, ctx(settings={"p": 11, "width": 16, "heads": 2,
                                                  "train_fraction": 0.5}))
    n = len(t.x_train)  # 55 of 110 equations (x/y needs y != 0)
    assert n == 55 and t.batch_size == 28
    batches = t.next_batches()
    assert [len(b) for b in batches[:4]] == [28, 27, 28, 27]
    assert sorted(torch.cat(batches[:2]).tolist()) == list(range(n))
    assert sorted(torch.cat(batches[2:4]).tolist()) == list(range(n))
    assert not torch.equal(torch.cat(batches[:2]), torch.cat(batches[2:4]))


@pytest.mark.parametrize("sampling", ["epoch", "step"])
def test_grokking_resumes_mid_epoch_bit_identically(sampling: str) -> None:
    """Batches of 7 from 55 training equations: a unit of 100 steps ends inside an epoch, so
    the checkpoint must carry the epoch's order and position."""
    settings = {"p": 11, "width": 16, "heads": 2, "layers": 1, "batch_size": 7,
                "sampling": sampling, "dropout": 0.1}
    cls = get_trainer("grokking")
    t = cls({}, ctx(settings=settings))
    list(t.train(0, 1))
    if sampling == "epoch":  # 8 batches per epoch; 100 = 12 * 8 + 4: mid-epoch
        assert len(t.x_train) == 55 and t.cursor == 28
    assert_resume_identical(lambda: cls({}, ctx(seed=2, max_resource=2, settings=settings)),
                            1, 2)


# ---------------------------------------------------------------- schedules


def test_step_schedule_divides_by_ten_at_the_milestones() -> None:
    assert lr_factor("step", 0.0) == 1.0 and lr_factor("step", 0.4999) == 1.0
    assert lr_factor("step", 0.5) == pytest.approx(0.1)
    assert lr_factor("step", 0.7499) == pytest.approx(0.1)
    assert lr_factor("step", 0.75) == pytest.approx(0.01)
    assert lr_factor("step", 1.0) == pytest.approx(0.01)


def test_preact_schedule_at_the_papers_iterations(cifar_dir: str) -> None:
    """He et al.: 0.01 for the first 400 iterations, 0.1 until 32k, 0.01 until 48k, 0.001 to
    64k. With 45,000 training images and batch 128, 182 epochs are the paper's 64k steps; the
    lr the optimizer holds after training is checked too, not only the formula."""
    t = get_trainer("preact_resnet")({}, ctx(max_resource=182, data_dir=cifar_dir,
                                             settings={"depth": 8, "block": "basic"}))
    t.steps_per_epoch, t.total_steps = 352, 182 * 352  # as with the real data set
    lr = [0.1 * t.lr_factor_at(s) for s in (0, 399, 400, 31_999, 32_032, 48_047, 48_048)]
    assert lr == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001])
    small = get_trainer("preact_resnet")({}, ctx(max_resource=4, data_dir=cifar_dir, settings={
        "depth": 8, "block": "basic", "batch_size": 8, "warmup_steps": 2}))
    steps = small.steps_per_epoch  # 6 per epoch, 24 in all: milestones at steps 12 and 18
    seen = []
    for _ in small.train(0, 4):
        seen.append(small.optimizer.param_groups[0]["lr"])  # the last step of each epoch
    assert steps == 6 and seen == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert small.optimizer.param_groups[0]["nesterov"] is False  # the paper's plain momentum


# ---------------------------------------------------------------- max-norm


def test_max_norm_binds_in_the_paper_recipe() -> None:
    """Hinton et al. 2012: at epsilon = 10 the constraint is what holds the weights: within two
    epochs hidden units' incoming norms reach the bound of 15, and without the constraint they
    would have gone past it."""
    mlp = get_trainer("mlp")
    assert mlp({}, ctx(settings={"dataset": "digits"})).cfg["width"] == 800
    settings = {"dataset": "digits", "width": 256}  # narrower than the paper's: faster
    t = mlp({}, ctx(settings=settings))
    assert t.cfg["lr"] == 10.0 and t.cfg["max_norm"] == 15.0 and t.cfg["optimizer"] == "hinton"
    assert t.cfg["batch_size"] == 100
    list(t.train(0, 2))
    assert t.max_norm_hits > 0
    norms = torch.cat([m.weight.detach().norm(dim=1) for m in t.model.hidden_linears()])
    assert float(norms.max()) == pytest.approx(15.0, rel=1e-5)
    free = mlp({"max_norm": 0.0}, ctx(settings=settings))
    list(free.train(0, 2))
    assert free.max_norm_hits == 0
    assert max(float(m.weight.detach().norm(dim=1).max())
               for m in free.model.hidden_linears()) > 15.0


def test_hinton_momentum_update_and_ramp() -> None:
    """Delta w <- p Delta w - (1 - p) eps g; p from 0.5 to 0.99 over 500 epochs; eps 10 decayed
    by 0.998 per epoch."""
    t = get_trainer("mlp")({}, ctx(settings={"dataset": "digits", "width": 8}))
    assert t.momentum_at(0) == 0.5 and t.momentum_at(250) == pytest.approx(0.745)
    assert t.momentum_at(500) == t.momentum_at(2000) == pytest.approx(0.99)
    assert t.lr_factor_at(3 * t.steps_per_epoch) == pytest.approx(0.998**3)
    w = torch.nn.Parameter(torch.zeros(2))
    from hpod.trainers.mlp import HintonMomentum

    opt = HintonMomentum([w], lr=10.0, momentum=0.5)
    for _ in range(2):
        w.grad = torch.ones(2)
        opt.step()
    assert w.tolist() == pytest.approx([-5.0 + -(2.5 + 5.0)] * 2)  # -5, then -2.5 - 5


# ---------------------------------------------------------------- muP


def test_mup_readout_bias_is_not_scaled() -> None:
    """mup's MuReadout scales the readout's input by output_mult / m and adds the bias as is."""
    m = 4.0
    net = MuMLP(5, 64, 2, 3, m, mup=True, bias=True)
    with torch.no_grad():
        net.readout.bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
    x = torch.randn(7, 5)
    assert torch.equal(net(x), net.readout.bias.expand(7, 3))  # zero readout: bias alone
    with torch.no_grad():
        net.readout.weight.normal_()
    h = torch.relu(net.hidden[0](torch.relu(net.input(x))))
    expected = h @ net.readout.weight.T / m + net.readout.bias
    assert torch.allclose(net(x), expected, atol=1e-6)


def test_mup_per_layer_learning_rates_and_weight_decay() -> None:
    """mup.optim: MuAdam(W) divides the hidden (matrix-like) rate by m and multiplies its decay
    by m; MuSGD multiplies vector-like rates by m and divides their decay by m."""
    cls = get_trainer("mup_mlp")
    base = {"dataset": "digits", "width": 256, "base_width": 64, "bias": True,
            "weight_decay": 0.01, "lr": 0.1}
    adam = cls({}, ctx(settings={**base, "optimizer": "adamw"}))
    groups = sorted((g["lr"], g["weight_decay"]) for g in adam.optimizer.param_groups)
    assert [x for g in groups for x in g] == pytest.approx([0.025, 0.04, 0.1, 0.01])
    sgd = cls({}, ctx(settings={**base, "optimizer": "sgd"}))
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in sgd.optimizer.param_groups
                for p in g["params"]}
    model = sgd.model
    assert by_param[id(model.input.weight)] == pytest.approx((0.4, 0.0025))
    assert by_param[id(model.readout.weight)] == pytest.approx((0.4, 0.0025))
    assert by_param[id(model.hidden[0].weight)] == pytest.approx((0.1, 0.01))
    assert by_param[id(model.readout.bias)] == pytest.approx((0.1, 0.01))


def test_sp_and_mup_differ_at_base_width_only_in_the_readout_init() -> None:
    cls = get_trainer("mup_mlp")
    base = {"dataset": "digits", "width": 64, "base_width": 64, "bias": True}

    def make(parameterization: str, readout_init: str = "auto") -> Trainer:
        return cls({}, ctx(settings={**base, "parameterization": parameterization,
                                     "readout_init": readout_init}))

    mup, sp = make("mup"), make("sp")
    a, b = mup.model.state_dict(), sp.model.state_dict()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == ["readout.weight"] and not a["readout.weight"].any()
    same_mup, same_sp = make("mup", "fan_in"), make("sp", "fan_in")
    assert list(same_mup.train(0, 1)) == list(same_sp.train(0, 1))  # bit for bit


def test_mup_paper_recipe_is_the_authors_mlp_experiment() -> None:
    t = get_trainer("mup_mlp")({}, ctx(settings={"dataset": "digits"}))
    assert t.cfg["optimizer"] == "sgd" and t.cfg["lr"] == 0.1 and t.cfg["momentum"] == 0.9
    assert t.cfg["schedule"] == "constant" and t.cfg["batch_size"] == 64
    assert all(m.bias is None for m in t.model.modules() if isinstance(m, torch.nn.Linear))
    assert len(t.model.hidden) == 1 and not t.model.readout.weight.any()
    assert t.optimizer.param_groups[0]["nesterov"] is False


# ---------------------------------------------------------------- recipes and options


@pytest.mark.parametrize("name", ["mlp", "grokking", "mup_mlp", "densenet", "preact_resnet"])
def test_recipe_paper_is_the_default_and_unknown_recipes_are_refused(
        name: str, cifar_dir: str) -> None:
    cls = get_trainer(name)
    tiny = {"mlp": {"width": 8}, "grokking": {"p": 11, "width": 16, "heads": 2},
            "mup_mlp": {"width": 16}, "densenet": {"depth": 10, "growth_rate": 4},
            "preact_resnet": {"depth": 8, "block": "basic"}}[name]
    t = cls({}, ctx(data_dir=cifar_dir, settings={**tiny, "dataset": "digits"}
                    if name in ("mlp", "mup_mlp") else tiny))
    assert t.cfg["recipe"] == "paper"
    with pytest.raises(ValueError, match="unknown recipe 'newest'.*modern"):
        cls({}, ctx(data_dir=cifar_dir, settings={**tiny, "recipe": "newest"}))


def test_a_named_option_overrides_the_recipe(cifar_dir: str) -> None:
    dn = get_trainer("densenet")
    settings = {"depth": 10, "growth_rate": 4}
    modern = dn({}, ctx(data_dir=cifar_dir, settings={**settings, "recipe": "modern"}))
    assert modern.cfg["schedule"] == "cosine" and modern.cfg["precision"] == "bf16"
    mixed = dn({}, ctx(data_dir=cifar_dir, settings={**settings, "schedule": "cosine"}))
    assert mixed.cfg["schedule"] == "cosine" and mixed.cfg["precision"] == "fp32"


# ---------------------------------------------------------------- device-independent checkpoints


def test_checkpoints_hold_only_cpu_generator_states(cifar_dir: str) -> None:
    for name, settings in [("mlp", {"width": 8, "dataset": "digits"}),
                           ("grokking", {"p": 11, "width": 16, "heads": 2, "dropout": 0.1}),
                           ("densenet", {"depth": 10, "growth_rate": 4, "augment": False})]:
        t = get_trainer(name)({}, ctx(data_dir=cifar_dir, settings=settings))
        list(t.train(0, 1))
        state = t.state_dict()
        assert "dropout_rng" not in state, name
        bytes_ = [v for v in state.values() if isinstance(v, torch.Tensor)
                  and v.dtype == torch.uint8]
        assert bytes_ and all(v.device.type == "cpu" and v.numel() == CPU_GENERATOR_STATE
                              for v in bytes_), name


def cuda_shaped_generator_state(seed: int = 7, offset: int = 4096) -> torch.Tensor:
    """What ``torch.cuda.Generator.get_state()`` returns: the Philox seed and offset as 16
    bytes (a CPU generator's Mersenne Twister state is 5,056)."""
    return torch.tensor([seed, offset], dtype=torch.int64).view(torch.uint8)


def test_a_checkpoint_from_a_gpu_worker_resumes_on_a_cpu_worker() -> None:
    """Checkpoints written before generator states were device-independent hold the dropout
    generator's device state (``dropout_rng``); such a state of a GPU worker must not break a
    CPU worker's resume. Dropout masks now come from (seed, step), so the resumed run is the
    uninterrupted one, bit for bit."""
    make = lambda: get_trainer("mlp")(  # noqa: E731
        {}, ctx(seed=3, max_resource=3, settings={"width": 16, "lr": 1.0, "dataset": "digits"}))
    full = list(make().train(0, 3))
    first = make()
    head = list(first.train(0, 1))
    state = dict(first.state_dict())
    state["dropout_rng"] = cuda_shaped_generator_state()  # as an older GPU worker wrote it
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buf, map_location="cpu"))
    assert head + list(resumed.train(1, 3)) == full


def test_a_device_shaped_data_generator_state_is_a_clear_error() -> None:
    t = get_trainer("mlp")({}, ctx(settings={"width": 8, "dataset": "digits"}))
    state = roundtrip(t.state_dict())
    state["data_rng"] = cuda_shaped_generator_state()
    with pytest.raises(ValueError, match="data_rng.*16-byte.*GPU"):
        t.load_state_dict(state)


def test_step_seeded_dropout_stream() -> None:
    s = StepSeeded(5, "cpu")
    a = torch.rand(4, generator=s.at(10))
    b = torch.rand(4, generator=s.at(11))
    assert torch.equal(a, torch.rand(4, generator=StepSeeded(5, "cpu").at(10)))
    assert not torch.equal(a, b)
    assert not torch.equal(a, torch.rand(4, generator=StepSeeded(6, "cpu").at(10)))


def test_deterministic_setting_is_accepted_and_changes_nothing_on_the_cpu(cifar_dir: str) -> None:
    settings = {"depth": 8, "block": "basic", "batch_size": 8}
    cls = get_trainer("preact_resnet")
    a = list(cls({}, ctx(data_dir=cifar_dir, max_resource=1, settings=settings)).train(0, 1))
    b = list(cls({}, ctx(data_dir=cifar_dir, max_resource=1,
                         settings={**settings, "deterministic": True})).train(0, 1))
    assert a == b


# ---------------------------------------------------------------- compiled models


GRAPHS: list[int] = []


def _count(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
    GRAPHS.append(len(example_inputs))
    return gm.forward


torch._dynamo.register_backend(compiler_fn=_count, name="hpod_test_count")


@pytest.fixture()
def counting_backend() -> Any:
    """A torch.compile backend that runs graphs eagerly and counts how many it was given."""
    GRAPHS.clear()
    torch._dynamo.reset()
    yield GRAPHS
    torch._dynamo.reset()


def test_compiled_model_compiles_once_per_mode(cifar_dir: str, counting_backend: list[int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """45 training images in batches of 8 leave a partial batch (dropped when compiled); 5
    validation images in batches of 3 leave one of 2 (padded): one training graph and one
    evaluation graph over two epochs, and none more for a resumed trainer."""
    monkeypatch.setattr(_cifar, "EVAL_BATCH", 3)
    settings = {"depth": 10, "growth_rate": 4, "batch_size": 8, "compile": "hpod_test_count"}
    cls = get_trainer("densenet")
    t = cls({}, ctx(data_dir=cifar_dir, settings=settings))
    assert t.steps_per_epoch == 5  # 45 // 8, the last 5 images dropped
    uncompiled = cls({}, ctx(data_dir=cifar_dir, settings={**settings, "compile": False}))
    assert uncompiled.steps_per_epoch == 6
    list(t.train(0, 2))
    assert len(counting_backend) == 2, counting_backend
    resumed = cls({}, ctx(data_dir=cifar_dir, settings=settings))
    resumed.load_state_dict(roundtrip(t.state_dict()))
    list(resumed.train(2, 3))
    assert len(counting_backend) == 2, counting_backend


def test_compiled_eval_matches_uncompiled(cifar_dir: str, counting_backend: list[int],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cifar, "EVAL_BATCH", 3)
    settings = {"depth": 10, "growth_rate": 4, "batch_size": 8, "drop_last": True}
    cls = get_trainer("densenet")
    plain = list(cls({}, ctx(data_dir=cifar_dir, settings=settings)).train(0, 2))
    compiled = list(cls({}, ctx(data_dir=cifar_dir, settings={
        **settings, "compile": "hpod_test_count"})).train(0, 2))
    assert [r for r, _ in plain] == [r for r, _ in compiled]
    assert [v for _, v in plain] == pytest.approx([v for _, v in compiled], abs=1e-6)
