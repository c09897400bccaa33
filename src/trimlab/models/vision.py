"""Vision backbones. Each takes `input_shape` (C, H, W) and `num_classes` from the DataModule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Stages of 3×3 conv-BN-ReLU, 2×2 max-pool between stages, average pool to `pool_to`², dropout, linear.

    `pool_to` > 1 keeps a coarse layout of where features are (global pooling throws it away), which is what
    lets a three-conv net reach 99% on MNIST in three epochs.
    """

    modality = "vision"  # the data it fits (see the model contract in trimlab.models)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        dropout: float = 0.1,
        pool_to: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = input_shape[0], min(input_shape[1:])
        for stage, width in enumerate(widths):
            if stage > 0 and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            for _ in range(convs_per_stage):
                layers.append(conv_bn_relu(channels, width))
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool_to),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels * pool_to**2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, out_channels, stride),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: stem, `stages` stages of `blocks_per_stage` basic blocks (width doubling, stride 2)."""

    modality = "vision"  # the data it fits (see the model contract in trimlab.models)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 16,
        stages: int = 3,
        blocks_per_stage: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels, size = input_shape[0], min(input_shape[1:])
        if size >= 64:  # ImageNet-style stem: /4 before the first stage
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = conv_bn_relu(in_channels, width)
        blocks: list[nn.Module] = []
        channels = width
        for stage in range(stages):
            out_channels = width * 2**stage
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
