"""Every config option composes, passes the checks, and names importable targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_object

from conftest import compose_train
from trimlab.checks import validate_config
from trimlab.errors import ConfigError
from trimlab.launch import config_dir

CONF = Path(config_dir())
OPTIONS = sorted(
    (str(path.parent.relative_to(CONF)), path.stem) for path in CONF.rglob("*.yaml") if path.parent != CONF
)


def test_every_group_has_options():
    groups = {group for group, _ in OPTIONS}
    assert {
        "data",
        "model",
        "task",
        "trainer",
        "strategy",
        "precision",
        "compression",
        "callbacks",
        "logger",
        "paths",
        "experiment",
        "debug",
        "semi_supervised",
        "task/optimizer",
        "task/scheduler",
    } <= groups


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option, tmp_path):
    required = {"image_folder": ["data.folder=somewhere"], "wav_folder": ["data.folder=somewhere"],
                "speech_commands_transfer": ["model.pretrained=somewhere"],
                "stop_at_target": ["cost.target=val/acc:0.9"]}  # fmt: skip
    extra = required.get(option, []) + (["data.file=some.csv"] if option == "text_csv" else [])
    if option in ("distill", "sst2_distill"):  # a teacher: any finished run dir
        (tmp_path / "teacher").mkdir()
        (tmp_path / "teacher" / "summary.json").write_text("{}")
        extra.append(f"compression.distill.teacher={tmp_path / 'teacher'}")
    cfg = compose_train(f"{group}={option}", *extra, output_dir=tmp_path)
    if option == "fsdp" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="model_parallel"):
            validate_config(cfg)
    elif option == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA GPU and none is visible"):
            validate_config(cfg)
    else:
        validate_config(cfg)


def targets(node):
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for value in node.values():
            yield from targets(value)


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_targets_import(path):
    for target in targets(yaml.safe_load(path.read_text()) or {}):
        assert callable(get_object(target)), target


def test_presets_override_the_primary_config(tmp_path):
    cfg = compose_train("experiment=mnist_resnet", output_dir=tmp_path)
    assert cfg.task_name == "mnist_resnet"
    assert cfg.data._target_.endswith("MNISTDataModule") and cfg.model._target_.endswith("ResNet")
    assert compose_train("debug=limit", output_dir=tmp_path).task_name == "debug"


def test_derived_values_are_interpolated(tmp_path):
    cfg = compose_train(output_dir=tmp_path)
    assert cfg.callbacks.model_checkpoint.monitor == cfg.task.monitor
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert cfg.data.shuffle_seed == cfg.seed
