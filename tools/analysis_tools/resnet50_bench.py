"""A plain-PyTorch ResNet-50 with one norm layer everywhere, for benchmarks.

mmdet's ResNet needs mmcv, which a bare GPU machine does not have, so the
whole-network benchmark of ``benchmark_norms.py`` builds this one:
torchvision's ``resnet50(norm_layer=...)`` where torchvision imports, else
the same architecture written out here (bottleneck v1.5: the stride on the
3x3 convolution; stages of 3, 4, 6, 3 blocks; 25.6 M parameters with
1000 classes).

Every norm layer is made by ``norm(channels)``: :func:`norm_factory` gives
SN, GroupNorm(32) and BatchNorm2d factories.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def norm_factory(name: str) -> NormFactory:
    """``'SN'`` (mmnorm SwitchableNorm), ``'GN'`` (GroupNorm with 32
    groups) or ``'BN'`` (BatchNorm2d) as a ``channels -> module`` factory."""
    if name == 'SN':
        from mmnorm import SwitchableNorm
        return lambda c: SwitchableNorm(c)
    if name == 'GN':
        return lambda c: nn.GroupNorm(32, c)
    if name == 'BN':
        return lambda c: nn.BatchNorm2d(c)
    raise ValueError(f'resnet50_bench: norm must be SN, GN or BN, got '
                     f'{name!r}')


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (4x width), each followed by a norm;
    identity or 1x1-conv + norm shortcut; ReLU after the sum."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int,
                 norm: NormFactory) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride, bias=False),
                norm(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50(nn.Module):
    """``(N, 3, H, W)`` images -> ``(N, num_classes)`` logits."""

    def __init__(self, norm: NormFactory, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, in_channels = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                      (512, 3, 2)):
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(in_channels, width,
                                         stride if i == 0 else 1, norm))
                in_channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out',
                                        nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(norm: str | NormFactory, num_classes: int = 1000,
             prefer_torchvision: bool = True) -> nn.Module:
    """A ResNet-50 with ``norm`` (a name for :func:`norm_factory` or a
    factory) in every norm slot; torchvision's when it imports and
    ``prefer_torchvision``, else :class:`ResNet50`."""
    factory = norm_factory(norm) if isinstance(norm, str) else norm
    if prefer_torchvision:
        try:
            from torchvision.models import resnet50 as tv_resnet50
        except ImportError:
            pass
        else:
            return tv_resnet50(weights=None, num_classes=num_classes,
                               norm_layer=factory)
    return ResNet50(factory, num_classes)
