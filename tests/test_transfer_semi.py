"""Transfer learning (pretrained weights, head re-initialization, freeze-then-unfreeze) and pseudo-labelling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, assert_clear_error, run_cli
from trimlab.errors import CheckpointError
from trimlab.models.vision import SmallCNN
from trimlab.transfer import FreezeBackbone, load_pretrained


def save_backbone(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_pretrained_weights_load_and_a_new_head_is_fresh(tmp_path):
    torch.manual_seed(0)
    source = SmallCNN([1, 8, 8], num_classes=10, widths=[8, 16])
    checkpoint = save_backbone(source, tmp_path / "source.ckpt")
    target = SmallCNN([1, 8, 8], num_classes=3, widths=[8, 16])
    head_before = target.head[-1].weight.clone()
    info = load_pretrained(target, checkpoint)
    assert info["reinitialized"] == ["head.3.bias", "head.3.weight"]
    assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)
    assert torch.equal(target.head[-1].weight, head_before)


def test_other_class_names_or_inputs_are_not_taken_for_the_same(tmp_path):
    from trimlab.transfer import check_same_inputs

    source = tmp_path / "run"
    (source / "checkpoints").mkdir(parents=True)
    save_backbone(SmallCNN([1, 8, 8], 3, widths=[8, 16]), source / "checkpoints" / "best.ckpt")
    (source / "summary.json").write_text(json.dumps({"data": {"class_names": ["a", "b", "c"], "signature": {}}}))
    target = SmallCNN([1, 8, 8], 3, widths=[8, 16])
    assert load_pretrained(target, source, {"class_names": ["a", "b", "c"]})["reinitialized"] == []
    assert load_pretrained(target, source, {"class_names": ["x", "y", "z"]})["reinitialized"] == [
        "head.3.bias",
        "head.3.weight",
    ]
    with pytest.raises(CheckpointError, match="sample_rate"):
        check_same_inputs("src", {"signature": {"sample_rate": 8000}}, {"signature": {"sample_rate": 16000}})


def test_freezing_under_ddp_is_refused(tmp_path):
    from conftest import compose_train
    from trimlab.checks import validate_config
    from trimlab.errors import ConfigError

    cfg = compose_train("strategy=ddp", "finetune.freeze_epochs=2", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="freeze_epochs=2"):
        validate_config(cfg)


def test_a_split_too_small_for_its_classes_is_a_clear_error():
    import numpy as np

    from trimlab.data.base import stratified_split
    from trimlab.errors import DataError

    with pytest.raises(DataError, match="cannot split"):
        stratified_split(np.array([0, 0, 0, 1, 2, 2, 2]), [0.3], seed=0)


def test_pretrained_from_another_architecture_is_refused(tmp_path):
    checkpoint = save_backbone(SmallCNN([1, 8, 8], 10, widths=[8, 16]), tmp_path / "source.ckpt")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_pretrained(SmallCNN([1, 8, 8], 10, widths=[8, 32]), checkpoint)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_pretrained(SmallCNN([1, 8, 8], 10), tmp_path / "missing")


def test_freeze_backbone_trains_the_head_first():
    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = SmallCNN([1, 8, 8], 10, widths=[8, 16])

    module = Holder()
    callback = FreezeBackbone(freeze_epochs=2)
    callback.freeze_before_training(module)
    frozen = {name: p.requires_grad for name, p in module.backbone.named_parameters()}
    assert not any(v for k, v in frozen.items() if not k.startswith("head."))
    assert all(v for k, v in frozen.items() if k.startswith("head."))
    callback.finetune_function(module, 1, None)
    assert not module.backbone.features[0][0].weight.requires_grad
    callback.finetune_function(module, 2, None)
    assert all(p.requires_grad for p in module.backbone.parameters())


@pytest.fixture(scope="module")
def digits_source(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("source")
    result = run_cli(*FAST, "trainer.max_epochs=1", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fine_tune_from_a_run_dir_with_a_small_labelled_set(digits_source, tmp_path):
    result = run_cli(
        *FAST,
        f"model.pretrained={digits_source}",
        "finetune.freeze_epochs=1",
        "data.labelled_fraction=0.2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((Path(result.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["transfer"]["reinitialized"] == [] and summary["transfer"]["loaded_tensors"] > 10
    assert summary["cost"]["train_samples"] < 0.25 * 1797 * 2  # 20% of the train split, 2 epochs


@pytest.mark.slow
def test_pretrained_of_another_model_is_a_clear_error(digits_source, tmp_path):
    result = run_cli(*FAST, f"model.pretrained={digits_source}", "model=resnet", cwd=tmp_path)
    assert_clear_error(result, "does not fit this model", "missing")


@pytest.mark.slow
def test_pseudo_labelling_reports_both_rounds(tmp_path):
    result = run_cli(*FAST, "semi_supervised=pseudo_label", "semi_supervised.threshold=0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    semi = json.loads((run_dir / "summary.json").read_text())["semi_supervised"]
    assert semi["labelled"] + semi["hidden"] == 1257  # the digits train split
    assert 0 < semi["pseudo_labelled"] <= semi["hidden"] and 0 <= semi["pseudo_label_acc"] <= 1
    assert set(semi["round1"]["metrics"]) >= {"test/acc", "test/f1_macro"}
    assert Path(semi["round1"]["checkpoint"]).parent == run_dir.absolute() / "checkpoints" / "round1"
