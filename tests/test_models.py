from __future__ import annotations

import pytest
import torch

from trimlab.models.vision import ResNet, SmallCNN


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_cnn_shapes(shape):
    model = SmallCNN(shape, num_classes=7, widths=[8, 16], dropout=0.2)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 224, 224)])
def test_resnet_shapes(shape):
    model = ResNet(shape, num_classes=5, width=8, stages=3, blocks_per_stage=1)
    assert model(torch.randn(2, *shape)).shape == (2, 5)


def test_resnet_depth_and_width_change_size():
    small = sum(p.numel() for p in ResNet((1, 28, 28), 10, width=8, blocks_per_stage=1).parameters())
    deep = sum(p.numel() for p in ResNet((1, 28, 28), 10, width=8, blocks_per_stage=2).parameters())
    wide = sum(p.numel() for p in ResNet((1, 28, 28), 10, width=16, blocks_per_stage=1).parameters())
    assert small < deep and small < wide


def test_backbones_learn_a_batch():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    for model in (
        SmallCNN((1, 8, 8), 4, widths=[16, 32], dropout=0.0),
        ResNet((1, 8, 8), 4, width=8, stages=2, blocks_per_stage=1),
    ):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        assert loss.item() < 0.2


def test_cnn_pooled_head_keeps_layout():
    model = SmallCNN((1, 28, 28), num_classes=10, widths=[8, 16, 32], pool_to=2)
    assert model.head[-1].in_features == 32 * 4
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
