"""Pre-activation ResNet for CIFAR (He et al., "Identity Mappings in Deep Residual Networks",
2016).

Each residual unit applies BN-ReLU *before* its convolutions and adds its input unchanged (an
identity path from the first unit to the last, the point of the paper). Three stages at 32x32,
16x16 and 8x8 with ``n`` units each; a ``basic`` unit is two 3x3 convolutions (depth 6n+2,
widths 16/32/64; ResNet-110 is n=18), a ``bottleneck`` unit is 1x1-3x3-1x1 with 4x expansion
(depth 9n+2, output widths 64/128/256; ResNet-164 is n=18). The default is the paper's headline
CIFAR model, the 164-layer bottleneck network (5.46 % error on CIFAR-10). When a unit changes
the shape, the shortcut is a 1x1 projection of the pre-activated input. The paper trains with
SGD momentum 0.9 at 0.1, weight decay 1e-4, batch 128; the loop is ``_cifar.CifarTrainer``'s.
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

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, c_out, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        # Projecting the pre-activated input, as in the paper's code, when the shape changes.
        skip = x if self.shortcut is None else self.shortcut(a)
        h = self.conv1(a)
        h = self.conv2(F.relu(self.bn2(h)))
        return h + skip


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
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
    def __init__(self, depth: int = 164, block: str = "bottleneck", num_classes: int = 10) -> None:
        super().__init__()
        unit: type[PreActBasic] | type[PreActBottleneck]
        if block == "basic":
            unit, per = PreActBasic, 6
        elif block == "bottleneck":
            unit, per = PreActBottleneck, 9
        else:
            raise ValueError(f"unknown block {block!r}; use basic or bottleneck")
        if depth < per + 2 or (depth - 2) % per:
            raise ValueError(f"a {block} pre-act ResNet has depth {per}n+2, n >= 1 (got {depth})")
        n = (depth - 2) // per
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        units: list[nn.Module] = []
        c = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                units.append(unit(c, width, stride))
                c = width * unit.expansion
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
    }

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 0.01, "high": 0.5, "log": True},
            {"name": "weight_decay", "type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            {"name": "schedule", "type": "categorical", "choices": ["cosine", "onecycle"]},
        ]

    def build_model(self, cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
        return PreActResNet(int(cfg["depth"]), str(cfg["block"]), num_classes)
