"""DenseNet-BC for CIFAR (Huang et al., "Densely Connected Convolutional Networks", 2017).

Three dense blocks of ``(depth - 4) / 6`` bottleneck layers each (BN-ReLU-Conv1x1 to ``4k``
channels, BN-ReLU-Conv3x3 to ``k`` new channels, concatenated onto the input), joined by
transitions that compress the channels by 0.5 (BN-ReLU-Conv1x1) and halve the resolution
(2x2 average pooling); the stem is a 3x3 convolution to ``2k`` channels. ``depth`` (L) and
``growth_rate`` (k) are configurable; L=100, k=12 is the paper's documented default (0.8 M
parameters, 4.51 % error on CIFAR-10 with augmentation). The paper trains with SGD (Nesterov
momentum 0.9) at 0.1, weight decay 1e-4, batch 64, dropout only without augmentation (so none
here). The training loop is ``_cifar.CifarTrainer``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar import COMMON_DEFAULTS, CifarTrainer, kaiming_init
from .base import register_trainer


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)  # the "B": bottleneck
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        h = self.conv2(F.relu(self.bn2(h)))
        return torch.cat([x, h], 1)


class Transition(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)  # the "C": compression

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(nn.Module):
    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10,
                 compression: float = 0.5) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 with n >= 1 (got {depth})")
        n = (depth - 4) // 6  # bottleneck layers per block (each has two convolutions)
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if block < 2:
                c_out = int(c * compression)
                layers.append(Transition(c, c_out))
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


@register_trainer
class DenseNetTrainer(CifarTrainer):
    name = "densenet"
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "depth": 100, "growth_rate": 12, "batch_size": 64,
    }

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 0.01, "high": 0.5, "log": True},
            {"name": "weight_decay", "type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            {"name": "schedule", "type": "categorical", "choices": ["cosine", "onecycle"]},
        ]

    def build_model(self, cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
        return DenseNetBC(int(cfg["depth"]), int(cfg["growth_rate"]), num_classes)
