"""DenseNet-BC for CIFAR (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017;
the authors' code is liuzhuang13/DenseNet, ``models/densenet.lua`` and
``models/DenseConnectLayer.lua``).

Three dense blocks of ``(depth - 4) / 6`` bottleneck layers each (BN-ReLU-Conv1x1 to ``4k``
channels, BN-ReLU-Conv3x3 to ``k`` new channels, concatenated onto the input), joined by
transitions that compress the channels by 0.5 (BN-ReLU-Conv1x1 to ``floor(0.5 c)``) and halve
the resolution (2x2 average pooling); the stem is a 3x3 convolution to ``2k`` channels; then
BN-ReLU, 8x8 average pooling, linear. ``depth`` (L) and ``growth_rate`` (k) are configurable;
the paper's Table 2 has L=100, k=12 (0.8 M parameters, 4.51 % error on CIFAR-10+), L=190,
k=40 (15.3 M) and L=250, k=24 (25.6 M).

``recipe: paper`` trains as Sec. 4.2 and the authors' ``opts.lua``: SGD with Nesterov momentum
0.9 (no dampening) at 0.1, weight decay 1e-4, batch 64, the rate divided by 10 at 50 % and 75 %
of the epochs (300 in the paper: set the study's maximum resource to 300), fp32. Without
augmentation (``augment: false``, the paper's C10/C100 columns) a dropout layer of rate 0.2
follows every convolution but the first (``dropout: auto``; a number sets it either way).
``recipe: modern``: cosine, bf16. The loop is ``_cifar.CifarTrainer``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar import COMMON_DEFAULTS, CifarTrainer, kaiming_init
from ._common import GenDropout
from .base import register_trainer

PAPER_DROPOUT = 0.2  # Sec. 4.2: without data augmentation only


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, dropout: float = 0.0,
                 g: torch.Generator | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)  # the "B": bottleneck
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)
        self.drop1, self.drop2 = _dropout(dropout, g), _dropout(dropout, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop1(self.conv1(F.relu(self.bn1(x))))
        h = self.drop2(self.conv2(F.relu(self.bn2(h))))
        return torch.cat([x, h], 1)


class Transition(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0,
                 g: torch.Generator | None = None) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)  # the "C": compression
        self.drop = _dropout(dropout, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.drop(self.conv(F.relu(self.bn(x)))), 2)


def _dropout(p: float, g: torch.Generator | None) -> nn.Module:
    if p == 0.0:
        return nn.Identity()
    if g is None:
        raise ValueError("dropout needs the trainer's generator")
    return GenDropout(p, g)


class DenseNetBC(nn.Module):
    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10,
                 compression: float = 0.5, dropout: float = 0.0,
                 g: torch.Generator | None = None) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 with n >= 1 (got {depth})")
        n = (depth - 4) // 6  # bottleneck layers per block (each has two convolutions)
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, dropout, g))
                c += growth
            if block < 2:
                c_out = int(c * compression)  # math.floor in the authors' code
                layers.append(Transition(c, c_out, dropout, g))
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def paper_dropout(cfg: Mapping[str, Any]) -> float:
    """``dropout: auto``: 0.2 without augmentation, none with it (Sec. 4.2)."""
    if cfg["dropout"] == "auto":
        return 0.0 if cfg["augment"] else PAPER_DROPOUT
    return float(cfg["dropout"])


@register_trainer
class DenseNetTrainer(CifarTrainer):
    name = "densenet"
    defaults: ClassVar[dict[str, Any]] = {
        **COMMON_DEFAULTS, "depth": 100, "growth_rate": 12, "batch_size": 64,
        "nesterov": True, "dropout": "auto",
    }

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 0.01, "high": 0.5, "log": True},
            {"name": "weight_decay", "type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        ]

    def build_model(self, cfg: Mapping[str, Any], num_classes: int,
                    dropout: torch.Generator) -> nn.Module:
        return DenseNetBC(int(cfg["depth"]), int(cfg["growth_rate"]), num_classes,
                          dropout=paper_dropout(cfg), g=dropout)
