"""A ResNet-18-shaped model (random init), for "bring your own model" examples and benchmarks.

Same module names and block structure as ``torchvision.models.resnet18`` (``conv1``, ``bn1``,
``layer1`` ... ``layer4`` of two ``BasicBlock`` each, ``fc``), written out here so it needs no
torchvision. ``width`` scales the channel counts (64 gives the real 11.7 M parameters).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet18_shaped"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, width: int = 64,
                 in_channels: int = 3, small_input: bool = False) -> None:
        super().__init__()
        w = width
        if small_input:  # 3x3 stem, no max-pool: for 8x8 .. 32x32 images
            self.conv1 = nn.Conv2d(in_channels, w, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        planes = [w, 2 * w, 4 * w, 8 * w]
        inplanes = w
        stages = []
        for i, (n, p) in enumerate(zip(layers, planes, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(inplanes, p, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_shaped(num_classes: int = 1000, width: int = 64, in_channels: int = 3,
                    small_input: bool = False) -> ResNet:
    """A ResNet-18 with torchvision's module names, randomly initialised."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width, in_channels=in_channels,
                  small_input=small_input)
