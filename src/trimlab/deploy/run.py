"""What the pipeline calls after the compress phase: targets from `cfg.deploy`, the ledger, the choice, and the
chosen artifact in `deployed/`. The default (`deploy=inductor`) does nothing: the cost block already holds the
compiled timings, so an ordinary run costs what it did."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from trimlab.batches import first_test_inputs
from trimlab.compression import artifact
from trimlab.deploy import choice, ledger
from trimlab.deploy.base import Target
from trimlab.factory import make

PACKAGES_KEY = "_packages_"


def target_nodes(cfg: DictConfig) -> dict[str, Any]:
    """The targets listed under `deploy` (nodes with a `_target_`), by name."""
    node = cfg.get("deploy") or {}
    return {str(name): value for name, value in node.items() if isinstance(value, DictConfig) and "_target_" in value}


def wanted(cfg: DictConfig) -> bool:
    return bool(set(target_nodes(cfg)) - {"inductor"})


def build_targets(cfg: DictConfig) -> list[Target]:
    """Inductor first (the baseline), then the others in the order listed."""
    nodes = target_nodes(cfg)
    nodes.setdefault("inductor", OmegaConf.create({"_target_": "trimlab.deploy.inductor.Inductor"}))
    targets = []
    for name in ["inductor", *(n for n in nodes if n != "inductor")]:
        knobs = OmegaConf.to_container(nodes[name], resolve=True)
        knobs.pop(PACKAGES_KEY, None)  # trimlab's declaration, not an argument of the class
        target = make(OmegaConf.create(knobs), f"deploy.{name}")
        target.name = name
        targets.append(target)
    return targets


def context_for(cfg: DictConfig, trained: nn.Module, compressed: Any, datamodule: Any, run_dir: Path) -> dict:
    """What the targets need besides the model: for a compressed run the trained model (inductor/fp32, the
    baseline), the artifact's folder (inductor/compressed), and, when the last stage exported an int8/bf16
    program, the model it started from (what the ONNX runtimes export and quantize themselves)."""
    from trimlab.compression.base import max_length

    context = {"max_length": max_length(datamodule), "chunk": cfg.cost.throughput_batch_size, "stages": []}
    if compressed is None:
        return context
    context.update(stages=compressed.stages, artifact_dir=Path(run_dir) / artifact.FOLDER, baseline_model=trained)
    if compressed.export_stage:
        from trimlab.compression.quantization import inductor_options

        context.update(inductor=inductor_options(), before_export=compressed.before_export,
                       export_stage=compressed.export_stage)  # fmt: skip
    return context


def deploy(cfg: DictConfig, trained: nn.Module, compressed: Any, datamodule: Any, run_dir: Path,
           trained_acc: float) -> tuple[dict, dict]:  # fmt: skip
    """(`summary["cost"]["deploy"]`, `summary["deploy"]`); built artifacts live in a scratch dir removed after."""
    model = artifact.load(run_dir, cfg, datamodule) if compressed is not None else trained
    context = context_for(cfg, trained, compressed, datamodule, run_dir)
    scratch = Path(run_dir) / "deploy.scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        entries, built = ledger.measure_all(build_targets(cfg), model, datamodule, cfg.cost, scratch, context)
        picked = choice.choose(entries, trained_acc, str(cfg.deploy.objective), float(cfg.deploy.tolerance_pt))
        if picked["chosen"] is not None:
            target, variant = picked["chosen"].split("/")
            entry = entries[target][variant]
            entries["best"] = {"variant": picked["chosen"], **entry}
            picked["manifest"] = choice.write_deployed(
                run_dir, picked["chosen"], built[target, variant], entry, first_test_inputs(datamodule),
                datamodule.class_names,
            )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return entries, picked
