"""Run the stages in order on the trained model; measure cost and test metrics before and after each; save,
reload and re-test the final artifact, so the summary's final metrics are those `trimlab-eval` reproduces."""

from __future__ import annotations

import copy
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from trimlab import schema
from trimlab.batches import first_test_inputs
from trimlab.compression import artifact
from trimlab.compression.base import Context, Stage, max_length, resolved_cost_cfg
from trimlab.cost import inference_cost
from trimlab.evaluation import TestRecord, evaluate_model, val_metrics
from trimlab.factory import make

log = logging.getLogger(__name__)
HEADLINE = schema.names(where="metrics", stage=True)


def deployable_size(model: nn.Module, exported: bool, sample: Any, length: int) -> int:
    """Bytes of what would be shipped: the exported program for graph stages, else the state_dict."""
    buffer = io.BytesIO()
    if exported:
        torch.export.save(artifact.slim(artifact.export_program(model, sample, length)), buffer)
    else:
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def sparse_size(model: nn.Module) -> int:
    """Bytes of the state_dict stored as a bitmask of nonzeros plus their values (what sparsity saves on disk)."""
    packed = {}
    for key, value in model.state_dict().items():
        flat = value.detach().flatten()
        mask = flat != 0
        packed[key] = (torch.from_numpy(np.packbits(mask.numpy())), flat[mask].clone())
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    return buffer.getbuffer().nbytes


def stage_cost(model: nn.Module, stage: Stage | None, sample: Any, cfg: Any, previous: dict, length: int) -> dict:
    """One ledger entry, measured like every other: fp32 inputs, the same batch sizes, threads and repeats."""
    from trimlab.compression.quantization import inductor_options

    exported = bool(stage and stage.exports)
    cost = inference_cost(model, sample, cfg, inductor=inductor_options() if exported else None)
    cost["precision"] = stage.precision if stage is not None else Stage.precision
    if exported:
        # A quantized graph hides these (parameters, FLOPs, and any cost.figures entry declared `carried`).
        cost.update({key: previous.get(key) for key in schema.names(cfg.get("figures"), carried=True)})
    elif cost["flops_per_sample"] is None:
        cost["flops_per_sample"] = previous.get("flops_per_sample")
    cost["size_bytes"] = deployable_size(model, exported, sample, length)
    # The tensors alone: an exported program also carries its graph (tens of KB, whatever the model's size).
    cost["weights_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if not exported and cost["nonzero_params"] < 0.9 * cost["params"]:
        cost["sparse_size_bytes"] = sparse_size(model)
    return cost


def headline(metrics: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {key: metrics[key] for key in HEADLINE if key in metrics}
    if "test/acc" in before:
        out["acc_delta_pt"] = round(100 * (metrics["test/acc"] - before["test/acc"]), 4)
    return out


def finetune(cfg: Any, datamodule: Any, distillation: Any, run_dir: Any) -> Any:
    """A function the stages call to fine-tune a model: the run's task and trainer settings, `epochs` epochs,
    learning rate × `lr_factor`, no checkpoints or loggers (the stage's result is saved by `artifact`)."""

    def run(model: nn.Module, epochs: int, callbacks: list, lr_factor: float = 1.0) -> nn.Module:
        task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
        task_cfg["optimizer"]["lr"] = float(task_cfg["optimizer"]["lr"]) * lr_factor
        task = make(OmegaConf.create(task_cfg), backbone=model, num_classes=datamodule.num_classes,
                    class_names=datamodule.class_names)  # fmt: skip
        task.distillation = distillation  # a distilled student keeps its teacher while it is fine-tuned
        trainer = instantiate(
            cfg.trainer, max_epochs=epochs, max_steps=-1, callbacks=callbacks, logger=False, strategy="auto",
            devices=1, num_nodes=1, enable_checkpointing=False, enable_progress_bar=False,
            default_root_dir=str(run_dir), precision="32-true",
        )  # fmt: skip
        model.train()
        trainer.fit(task, datamodule=datamodule)
        return task.backbone

    return run


@dataclass
class Compressed:
    """What the stages made: the ledger (metrics and cost of the baseline and after each stage), the saved
    artifact, and the reloaded artifact's test record (the deployed model's figures)."""

    stages: list[str]
    artifact: dict[str, Any]
    baseline: str
    baseline_metrics: dict[str, Any]
    baseline_cost: dict[str, Any]
    metrics_after: dict[str, dict]
    cost_after: dict[str, dict]
    final: TestRecord
    improvement: dict[str, Any]
    # The model as it entered an exporting (int8/bf16) stage: what ONNX Runtime and OpenVINO export and quantize
    # with their own tools, since the exported torch program of quantized ops does not convert to ONNX.
    before_export: nn.Module | None = None
    export_stage: str | None = None

    @property
    def final_cost(self) -> dict[str, Any]:
        return {**self.cost_after[self.stages[-1]], "size_bytes": self.artifact["size_bytes"]}

    def stage_seconds(self) -> float:
        return round(sum(cost["stage_time_s"] for cost in self.cost_after.values()), 3)

    def record(self) -> dict[str, Any]:
        """The summary's `compression` block."""
        return {"stages": self.stages, "artifact": self.artifact, "baseline": self.baseline,
                "improvement": self.improvement}  # fmt: skip


def compress(cfg: Any, stages: list[Stage], model: nn.Module, datamodule: Any, run_dir: Any, task: Any) -> Compressed:
    """Apply the stages in order, each measured like the baseline; save, reload and re-test the result."""
    cost_cfg = resolved_cost_cfg(cfg)
    sample, length = first_test_inputs(datamodule), max_length(datamodule)
    context = Context(cfg, datamodule, run_dir, sample, finetune(cfg, datamodule, task.distillation, run_dir))
    base_model, base_data, base_name = stages[0].baseline(model, datamodule)
    base_model.eval()
    base_metrics = evaluate_model(base_model, base_data).metrics
    base_cost = stage_cost(base_model, None, first_test_inputs(base_data), cost_cfg, {}, max_length(base_data))
    metrics_after, cost_after, previous_cost, previous_metrics = {}, {}, base_cost, base_metrics
    before_export = None
    for stage in stages:
        if stage.exports:
            before_export = copy.deepcopy(model).eval()
        started = time.perf_counter()
        model = stage.apply(model, context)
        seconds = time.perf_counter() - started
        result = evaluate_model(model, datamodule).metrics
        cost = stage_cost(model, stage, sample, cost_cfg, previous_cost, length)
        cost["stage_time_s"] = round(seconds, 3)
        metrics_after[stage.name] = {**headline(result, previous_metrics), "facts": stage.facts()}
        cost_after[stage.name] = cost
        previous_cost, previous_metrics = cost, result
        log.info("after %s: acc %.4f, latency %.3f ms", stage.name, result["test/acc"], cost["latency_ms_p50"])
    names = [stage.name for stage in stages]
    with artifact.staged(run_dir) as folder:  # compressed/ appears only once the reloaded model tests cleanly
        saved = artifact.save(model, any(s.exports for s in stages), sample, folder, names, length)
        loaded = artifact.load(folder.parent, cfg, datamodule, folder)
        final = evaluate_model(loaded, datamodule)
        final.metrics.update(val_metrics(loaded, datamodule))  # what a search selects on: see val_metrics
    gains = improvement(base_cost, previous_cost, saved, base_metrics, final.metrics)
    exporting = next((stage.name for stage in stages if stage.exports), None)
    return Compressed(names, saved, base_name, headline(base_metrics, {}), base_cost, metrics_after, cost_after,
                      final, gains, before_export, exporting)  # fmt: skip


def improvement(base: dict, last: dict, saved: dict, base_metrics: dict, final_metrics: dict) -> dict[str, Any]:
    """Ratios against the baseline. Compiled ratios only when both sides were compiled: a compile that failed
    on one side would otherwise credit compile's own gain to the stages."""
    both_compiled = bool(base.get("compiled")) and bool(last.get("compiled"))
    return {
        "latency": ratio(base["latency_ms_p50"], last["latency_ms_p50"]) if both_compiled else None,
        "throughput": ratio(last["throughput_samples_per_s"], base["throughput_samples_per_s"])
        if both_compiled
        else None,
        "latency_eager": ratio(base["latency_ms_p50_eager"], last["latency_ms_p50_eager"]),
        "throughput_eager": ratio(last["throughput_samples_per_s_eager"], base["throughput_samples_per_s_eager"]),
        "size": ratio(base["size_bytes"], saved["size_bytes"]),
        "weights": ratio(base.get("weights_bytes"), last.get("weights_bytes")),
        "acc_delta_pt": round(100 * (final_metrics["test/acc"] - base_metrics["test/acc"]), 4),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None
