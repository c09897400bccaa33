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


class NotAModule:
    def __init__(self, input_shape, num_classes, **kwargs):
        self.num_classes = num_classes


class NoHead(torch.nn.Module):
    """Logits from a layer named `classifier`: transfer and pruning would not find it."""

    def __init__(self, input_shape, num_classes, **kwargs):
        super().__init__()
        self.classifier = torch.nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        return self.classifier(x.flatten(1))


class WrongLogits(NoHead):
    """A `head`, but one logit too many."""

    def __init__(self, input_shape, num_classes, **kwargs):
        super().__init__(input_shape, num_classes + 1)
        self.head = self.classifier


class TupleLogits(WrongLogits):
    """Logits and features: the contract wants the logits alone."""

    def __init__(self, input_shape, num_classes, **kwargs):
        super().__init__(input_shape, num_classes - 1)

    def forward(self, x):
        return self.head(x.flatten(1)), x


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        pytest.param("NotAModule", "built a NotAModule, not a torch.nn.Module", id="not-a-module"),
        pytest.param("NoHead", "NoHead has no `head` module; name its classifier layer self.head", id="no-head"),
        pytest.param(
            "WrongLogits",
            "returned (2, 11) for a batch of 2; a backbone returns logits of shape (batch, num_classes)",
            id="wrong-shape",
        ),
        pytest.param("TupleLogits", "returned tuple for a batch of 2", id="tuple"),
    ],
)
def test_a_model_that_breaks_the_contract_is_refused_when_built(tmp_path, target, fragment):
    from conftest import compose_train
    from trimlab.errors import ConfigError
    from trimlab.factory import build

    with pytest.raises(ConfigError, match="see the model contract in trimlab.models") as caught:
        build(compose_train(f"model._target_=test_models.{target}", output_dir=tmp_path))
    assert fragment in str(caught.value)


def test_the_models_listed_for_a_modality_come_from_the_configs():
    from trimlab.factory import models_for

    assert models_for("vision") == "vision: cnn, resnet"
    assert models_for("speech") == "speech: speech_cnn, speech_resnet"
    # Data that declares no modality: every model, by modality (a model class that declares none is left out).
    assert models_for(None) == "vision: cnn, resnet; text: hf_encoder, transformer; speech: speech_cnn, speech_resnet"
