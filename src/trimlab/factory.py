"""Config → objects: `make` (Hydra's instantiate with errors that name the config key), the backbone sized by the
data and checked against the model contract (`trimlab.models`), the DataModule + task pair every entry point starts
from, and a finished run's saved config and summary (`load_run`).

Entry points, the pipeline, compression and distillation import these from here, never from each other."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from trimlab import rundir
from trimlab.batches import first_test_inputs, take
from trimlab.data.base import ClassificationDataModule
from trimlab.errors import ConfigError, TrimlabError
from trimlab.models import check_head, check_logits
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


def make_backbone(
    cfg: DictConfig, datamodule: ClassificationDataModule, compile: bool = False, check_on: Any = None
) -> torch.nn.Module:
    """The backbone from `cfg.model`, sized by the data and checked against the model contract (its logits' shape
    too, on `check_on` inputs, before compiling); `model.compile` is trimlab's key, not the class's."""
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
            f"model for this modality ({models_for(getattr(datamodule, 'modality', None))})"
        ) from err
    check_head(backbone, node["_target_"])
    if check_on is not None:
        check_logits(backbone, node["_target_"], check_on, datamodule.num_classes)
    if compile and wants_compile:
        backbone.compile()  # in place: state_dict keys stay the same, checkpoints load into an eager model
    return backbone


def models_for(modality: str | None) -> str:
    """`model=` options by the modality their class declares, read from the model/ dir of every config dir
    (trimlab's, and those added with `hydra.searchpath`): e.g. `vision: cnn, resnet`; only the data's own
    modality when it declares one."""
    by_modality: dict[str, list[str]] = {}
    found = {p.name: p for d in reversed(config_dirs()) for p in (d / "model").glob("*.yaml")}  # first dir wins
    for path in sorted(found.values(), key=lambda p: p.name):
        try:
            declared = getattr(get_class(str(OmegaConf.load(path).get("_target_"))), "modality", None)
        except Exception:  # a config whose class does not import is no option to list
            continue
        if declared:
            by_modality.setdefault(declared, []).append(path.stem)
    shown = {modality: by_modality[modality]} if modality in by_modality else by_modality
    return "; ".join(f"{name}: {', '.join(options)}" for name, options in shown.items())


def config_dirs() -> list[Path]:
    """The running Hydra job's config dirs in search order (trimlab's and those a `hydra.searchpath` adds: a
    user's own configs), or trimlab's alone outside a job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [Path(rundir.config_dir())]
    return [Path(s.path) for s in HydraConfig.get().runtime.config_sources if s.schema == "file" and s.path]


def build(
    cfg: DictConfig, compile: bool = False, artifacts_from: Path | None = None
) -> tuple[ClassificationDataModule, ClassificationTask]:
    """DataModule first: the backbone's input shape and class count come from it. `artifacts_from`: a finished
    run dir whose saved data artifacts (a tokenizer) are reused rather than rebuilt."""
    datamodule: ClassificationDataModule = make(cfg.data)
    datamodule.artifacts_from = artifacts_from
    datamodule.prepare_data()
    datamodule.setup("fit")
    backbone = make_backbone(cfg, datamodule, compile, check_on=take(first_test_inputs(datamodule), 2))
    task = make(cfg.task, backbone=backbone, num_classes=datamodule.num_classes, class_names=datamodule.class_names)
    return datamodule, task


def load_run(run_dir: Path, data_root: str | None = None) -> tuple[DictConfig, dict[str, Any]]:
    """A run's saved config (re-pointed at its own dir) and its summary; the run id becomes the current one."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(run_dir)
    if data_root:
        cfg.paths.data_root = data_root
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except ValueError as err:
        raise TrimlabError(f"{summary_path} is corrupt ({err}); restore it or re-run the training") from err
    rundir.set_run_id(summary.get("run_id") or rundir.run_id_from_dir(run_dir))
    return cfg, summary
