"""Pre-activation ResNet for CIFAR (He et al., "Identity Mappings in Deep Residual Networks",
ECCV 2016; the authors' code is KaimingHe/resnet-1k-layers, ``resnet-pre-act.lua``).

Each residual unit applies BN-ReLU *before* its convolutions and adds its input unchanged (an
identity path from the first unit to the last, the point of the paper). A 3x3 stem to 16
channels, three stages at 32x32, 16x16 and 8x8 with ``n`` units each, then BN-ReLU, global
average pooling and a linear classifier.

``block: bottleneck`` (depth 9n+2; ResNet-164 is n=18, ResNet-1001 n=111; 1.7 M and 10.2 M
parameters, the paper's Table 2): 1x1-3x3-1x1 with output widths 64/128/256 and bottleneck
widths a quarter of that. As in ``resnet-pre-act.lua``: a unit that changes the shape (the
first of each stage) applies its BN-ReLU once, feeding both the residual branch and a 1x1
projection shortcut, and its stride sits on the *first 1x1* convolution (``stride_on: 1x1``;
``3x3`` is the later "ResNet v1.5" placement, offered as an option); the other units have
identity shortcuts.

``block: basic`` (depth 6n+2; ResNet-110 is n=18, 1.7 M parameters): two 3x3 convolutions,
widths 16/32/64. The authors' pre-act code has only the bottleneck; for the basic unit the paper
keeps the CIFAR ResNets of He et al. 2015 (Sec. 4.2), whose shortcuts are parameter-free
(``shortcut: pad``, "option A": stride-2 subsampling and zero channels appended). ``shortcut:
projection`` uses a 1x1 convolution of the pre-activated input instead.

``recipe: paper`` trains as the paper (Sec. 4 and He et al. 2015, Sec. 4.2; the experiments
were run in Caffe): SGD with plain momentum 0.9 at 0.1, weight decay 1e-4, batch 128, the rate
divided by 10 at 32k and 48k of 64k iterations (50 % and 75 %: ``schedule: step``), after a
warm-up of 400 iterations at 0.01; fp32; 4-pixel-pad random crops and flips. With 45,000
training images (``data.py``'s split) a batch of 128 gives 352 steps per epoch: a study whose
maximum resource is 182 epochs runs the paper's 64k iterations. (The Torch re-implementation
uses batch 64 and Nesterov momentum, 200 epochs.) ``recipe: modern``: cosine, Nesterov, bf16.
The loop is ``_cifar.CifarTrainer``'s (precision, compilation, determinism, resume guarantees).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar import COMMON_DEFAULTS, CifarTrainer, kaiming_init
from .base import register_trainer


class PreActBasic(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, shortcut: str = "pad") -> None:
        super().__init__()
        c_out = width * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, c_out, 3, 1, 1, bias=False)
        self.stride, self.pad = stride, c_out - c_in
        changes = stride != 1 or c_in != c_out
        if shortcut not in ("pad", "projection"):
            raise ValueError(f"unknown shortcut {shortcut!r}; use pad or projection")
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False)
                         if changes and shortcut == "projection" else None)
        self.pads = changes and shortcut == "pad"

    def skip(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            return self.shortcut(a)  # projection of the pre-activated input
        if self.pads:  # option A: subsample, append zero channels; no parameters
            return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.pad))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return h + self.skip(x, a)


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, stride_on: str = "1x1") -> None:
        super().__init__()
        if stride_on not in ("1x1", "3x3"):
            raise ValueError(f"unknown stride_on {stride_on!r}; use 1x1 (the authors') or 3x3")
        c_out = width * self.expansion
        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, width, 1, s1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, s3, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        h = self.conv1(a)
        h = self.conv2(F.relu(self.bn2(h)))
        h = self.conv3(F.relu(self.bn3(h)))
        return h + skip


class PreActResNet(nn.Module):
    def __init__(self, depth: int = 164, block: str = "bottleneck", num_classes: int = 10,
                 stride_on: str = "1x1", shortcut: str = "pad") -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown block {block!r}; use basic or bottleneck")
        per = 6 if block == "basic" else 9
        if depth < per + 2 or (depth - 2) % per:
            raise ValueError(f"a {block} pre-act ResNet has depth {per}n+2, n >= 1 (got {depth})")
        n = (depth - 2) // per
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        units: list[nn.Module] = []
        c = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if block == "basic":
                    units.append(PreActBasic(c, width, stride, shortcut))
                    c = width
                else:
                    units.append(PreActBottleneck(c, width, stride, stride_on))
                    c = width * PreActBottleneck.expansion
        self.units = nn.Sequential(*units)
        self.bn = nn.BatchNorm2d(c)  # the last unit's output is not yet activated
        self.fc = nn.Linear(c, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.units(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


@register_trainer
class PreActResNetTrainer(CifarTrainer):
    name = "preact_resnet"
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "depth": 164, "block": "bottleneck", "batch_size": 128,
        "stride_on": "1x1", "shortcut": "pad", "warmup_steps": 400, "warmup_factor": 0.1,
    }

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 0.01, "high": 0.5, "log": True},
            {"name": "weight_decay", "type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        ]

    def build_model(self, cfg: Mapping[str, Any], num_classes: int,
                    dropout: torch.Generator) -> nn.Module:
        return PreActResNet(int(cfg["depth"]), str(cfg["block"]), num_classes,
                            str(cfg["stride_on"]), str(cfg["shortcut"]))
