"""Config → objects: `make` (Hydra's instantiate with errors that name the config key), the backbone sized by the
data, and the DataModule + task pair every entry point starts from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trimlab.data.base import ClassificationDataModule
from trimlab.errors import ConfigError, TrimlabError
from trimlab.task import ClassificationTask


def make(node: DictConfig, key: str | None = None, **kwargs: Any) -> Any:
    """`instantiate`, but a trimlab error raised by the target reaches the user as itself, not wrapped; with `key`
    (the node's place in the config), a bad argument is a config error naming that key."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, TrimlabError):
            raise cause from None
        user_error = isinstance(cause, TypeError | ValueError) or "Misconfiguration" in type(cause).__name__
        if key is None or not user_error:
            raise
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
        if unknown:
            raise ConfigError(
                f"{key}.{unknown.group(1)} is not an argument of {node.get('_target_')}; remove it or fix its spelling"
            ) from None
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{key} cannot be built: {first_line}; fix the {key}.* settings (see --cfg job)") from None


def make_backbone(cfg: DictConfig, datamodule: ClassificationDataModule, compile: bool = False) -> torch.nn.Module:
    """The backbone from `cfg.model`, sized by the data; `model.compile` is trimlab's key, not the class's."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    wants_compile = bool(node.pop("compile", False))
    node.pop("pretrained", None)  # trimlab's key: weights loaded by `train` (transfer.load_pretrained)
    try:
        backbone = make(
            OmegaConf.create(node),
            input_shape=list(datamodule.input_shape),
            num_classes=datamodule.num_classes,
            **datamodule.model_kwargs,
        )
    except InstantiationException as err:
        if not isinstance(err.__cause__, TypeError):  # a model for another modality: arguments do not fit
            raise
        raise ConfigError(
            f"model {node['_target_']} does not fit data {type(datamodule).__name__} ({err.__cause__}); pick a "
            "model for this modality (vision: cnn, resnet; text: transformer, hf_encoder; speech: speech_cnn, "
            "speech_resnet)"
        ) from err
    if compile and wants_compile:
        backbone.compile()  # in place: state_dict keys stay the same, checkpoints load into an eager model
    return backbone


def build(
    cfg: DictConfig, compile: bool = False, artifacts_from: Path | None = None
) -> tuple[ClassificationDataModule, ClassificationTask]:
    """DataModule first: the backbone's input shape and class count come from it. `artifacts_from`: a finished
    run dir whose saved data artifacts (a tokenizer) are reused rather than rebuilt."""
    datamodule: ClassificationDataModule = make(cfg.data)
    datamodule.artifacts_from = artifacts_from
    datamodule.prepare_data()
    datamodule.setup("fit")
    backbone = make_backbone(cfg, datamodule, compile)
    task = make(cfg.task, backbone=backbone, num_classes=datamodule.num_classes, class_names=datamodule.class_names)
    return datamodule, task
