"""Run the stages in order on the trained model; measure cost and test metrics before and after each; save,
reload and re-test the final artifact, so the summary's final metrics are those `trimlab-eval` reproduces."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from trimlab.batches import first_test_inputs, forward
from trimlab.compression import Context, Stage, artifact, max_length, resolved_cost_cfg
from trimlab.cost import inference_cost
from trimlab.metrics import classification_metrics, sklearn_report

log = logging.getLogger(__name__)
HEADLINE = ("test/acc", "test/f1_macro", "test/auroc_macro")
CARRIED = ("params", "trainable_params", "nonzero_params", "flops_per_sample")  # a quantized graph hides these


@torch.inference_mode()
def evaluate_model(model: nn.Module, datamodule: Any) -> dict[str, Any]:
    """Test metrics of any callable model (eager, exported or quantized), as the summary records them."""
    if not isinstance(model, torch.fx.GraphModule):  # an exported program refuses .eval(): it is fixed already
        model.eval()
    metrics = classification_metrics(datamodule.num_classes, "test/")
    probs, targets, losses = [], [], []
    for inputs, target in datamodule.test_dataloader():
        logits = forward(model, inputs).float()
        losses.append(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        probs.append(logits.softmax(-1))
        targets.append(target)
        metrics.update(probs[-1], target)
    result = {k: float(v) for k, v in metrics.compute().items()}
    all_probs, all_targets = torch.cat(probs).numpy(), torch.cat(targets).numpy()
    result["test/loss"] = float(torch.stack(losses).sum() / len(all_targets))
    report = sklearn_report(all_probs, all_targets, datamodule.class_names)
    result["sklearn"] = {k: report[k] for k in ("acc", "precision_macro", "recall_macro", "f1_macro", "auroc_macro")}
    result.update(per_class=report["per_class"], confusion_matrix=report["confusion_matrix"])
    result["test_samples"] = int(len(all_targets))
    return {"metrics": result, "probs": all_probs, "targets": all_targets}


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
    cost["precision"] = "bf16" if stage is not None and stage.name == "bf16" else "32-true"
    if exported:
        cost.update({key: previous.get(key) for key in CARRIED})
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
    from trimlab.factory import make

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


def compress(cfg: Any, stages: list[Stage], model: nn.Module, datamodule: Any, run_dir: Any, task: Any) -> dict:
    """Apply the stages; return the summary's compression record, the final metrics and cost, and the
    reloaded artifact's test outputs (for plots)."""
    cost_cfg = resolved_cost_cfg(cfg)
    sample, length = first_test_inputs(datamodule), max_length(datamodule)
    context = Context(cfg, datamodule, run_dir, sample, finetune(cfg, datamodule, task.distillation, run_dir))
    base_model, base_data, base_name = stages[0].baseline(model, datamodule)
    base_model.eval()
    base_metrics = evaluate_model(base_model, base_data)["metrics"]
    base_cost = stage_cost(base_model, None, first_test_inputs(base_data), cost_cfg, {}, max_length(base_data))
    metrics_after, cost_after, previous_cost, previous_metrics = {}, {}, base_cost, base_metrics
    for stage in stages:
        started = time.perf_counter()
        model = stage.apply(model, context)
        seconds = time.perf_counter() - started
        result = evaluate_model(model, datamodule)["metrics"]
        cost = stage_cost(model, stage, sample, cost_cfg, previous_cost, length)
        cost["stage_time_s"] = round(seconds, 3)
        metrics_after[stage.name] = {**headline(result, previous_metrics), "facts": stage.facts()}
        cost_after[stage.name] = cost
        previous_cost, previous_metrics = cost, result
        log.info("after %s: acc %.4f, latency %.3f ms", stage.name, result["test/acc"], cost["latency_ms_p50"])
    names = [stage.name for stage in stages]
    exported = any(s.exports for s in stages)
    with artifact.staged(run_dir) as folder:  # compressed/ appears only once the reloaded model tests cleanly
        saved = artifact.save(model, exported, sample, folder, names, length)
        final = evaluate_model(artifact.load(folder.parent, cfg, datamodule, folder), datamodule)
    return {
        "record": {"stages": names, "artifact": saved, "baseline": base_name,
                   "improvement": improvement(base_cost, previous_cost, saved, base_metrics, final["metrics"])},
        "baseline_metrics": headline(base_metrics, {}),
        "metrics_after": metrics_after,
        "baseline_cost": base_cost,
        "cost_after": cost_after,
        "final_cost": {**previous_cost, "size_bytes": saved["size_bytes"]},
        "final": final,
    }  # fmt: skip


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
