"""The model a server answers with, by `target`: the run's deployed variant (what `trimlab-predict` uses), or the
run's final model in one runtime. What `/info` says of it is read from the run dir alone (manifest, ledger), so
the HTTP process never loads a model; the inference worker loads it (`load`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trimlab.deploy import deployed
from trimlab.errors import ConfigError

# `<runtime>/fp32`: the fp32 form in that runtime even where the run deployed another variant there (a baseline).
TARGETS = ("deployed", "inductor", "onnxruntime", "openvino", "onnxruntime/fp32", "openvino/fp32")


def plan(run_dir: Path, summary: dict[str, Any], target: str) -> dict[str, Any]:
    """What `target` serves: the runtime, the ledger entry timed for it (when the run measured it), and how."""
    if target not in TARGETS:
        raise ConfigError(f"target={target} is unknown; use one of {', '.join(TARGETS)}")
    manifest = deployed.read_manifest(run_dir)
    ledger = (summary.get("cost") or {}).get("deploy") or {}
    if manifest is not None and target in ("deployed", manifest["target"]):
        deployed.check_runtime(manifest, run_dir)
        variant = f"{manifest['target']}/{manifest['variant']}"
        entry = (ledger.get(manifest["target"]) or {}).get(manifest["variant"]) or {}
        return {"target": manifest["target"], "variant": variant, "runtime": manifest["runtime"],
                "version": manifest["version"], "source": "deployed", "ledger": figures(entry)}  # fmt: skip
    if target == "deployed":  # no deploy targets ran: the model trimlab-predict uses, in eager torch
        from trimlab.deploy.base import version

        measured = figures(summary.get("cost") or {}, summary.get("metrics"))
        return {"target": "torch", "variant": "torch/eager", "runtime": "torch", "version": version("torch"),
                "source": "checkpoint", "ledger": measured}  # fmt: skip
    return built_plan(target.removesuffix("/fp32"), summary, ledger)


def built_plan(target: str, summary: dict[str, Any], ledger: dict[str, Any]) -> dict[str, Any]:
    """The run's final model in `target`, built when the server starts: its fp32 form (a compressed run's artifact
    in inductor); the ledger's entry for the same variant when the run measured it."""
    import importlib.util

    from trimlab.deploy.base import version

    runtime = "torch" if target == "inductor" else target
    if importlib.util.find_spec(runtime) is None:
        raise ConfigError(f"target={target} needs {runtime}, which is not installed; pip install 'trimlab[deploy]'")
    artifact = str(((summary.get("compression") or {}).get("artifact") or {}).get("path", ""))
    if target != "inductor" and artifact.endswith(".pt2"):
        raise ConfigError(f"target={target}: this run's final model is an exported int8/bf16 torch program "
                          f"({artifact}), which ONNX export does not take; serve target=inductor, or train with "
                          f"deploy=[inductor,{target}] and serve target=deployed")  # fmt: skip
    variant = "compressed" if target == "inductor" and summary.get("compression") else "fp32"
    entry = (ledger.get(target) or {}).get(variant) or {}
    if not entry and target == "inductor" and (summary.get("cost") or {}).get("compiled"):
        entry = summary["cost"]  # an ordinary run with compiled timings: its cost block is inductor's
    measured = figures(entry, None if entry.get("test/acc") else summary.get("metrics"))
    return {"target": target, "variant": f"{target}/{variant}", "runtime": runtime, "version": version(runtime),
            "source": "built", "ledger": measured}  # fmt: skip


def figures(entry: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ledger's latency (batch 1), throughput (batch 64) and accuracy for the served variant."""
    keys = ("latency_ms_p50", "latency_ms_p95", "throughput_samples_per_s", "test/acc", "test/f1_macro")
    found = {**(metrics or {}), **entry}
    return {key: found[key] for key in keys if isinstance(found.get(key), int | float)}


def load(run_dir: Path, cfg: Any, summary: dict[str, Any], datamodule: Any, served: dict[str, Any],
         scratch: Path) -> Callable[..., torch.Tensor]:  # fmt: skip
    """The runner for `served` (from `plan`): batch inputs in, logits out, as the ledger timed it."""
    from trimlab.predict import served_model

    manifest = deployed.read_manifest(run_dir)
    if served["source"] == "deployed":
        return deployed.load(run_dir, cfg, datamodule, manifest)
    model = served_model(run_dir, cfg, summary, datamodule, "deployed", None)
    if served["source"] == "checkpoint":
        return model
    return build(served["target"], model, cfg, datamodule, scratch)


def build(target: str, model: Any, cfg: Any, datamodule: Any, scratch: Path) -> Callable[..., torch.Tensor]:
    from trimlab.compression.base import max_length

    if target == "inductor":
        from trimlab.deploy.inductor import Compiled

        options = {}
        if isinstance(model, torch.fx.GraphModule):  # an int8 program compiles with the quantizer's pass
            from trimlab.compression.quantization import inductor_options, x86_quantizer_module

            x86_quantizer_module()
            options = inductor_options()
        return Compiled(model, options, int(cfg.cost.throughput_batch_size))
    from trimlab.deploy.ort import OnnxRuntime
    from trimlab.deploy.ov import OpenVino

    maker = {"onnxruntime": OnnxRuntime, "openvino": OpenVino}[target]
    context = {"max_length": max_length(datamodule), "chunk": int(cfg.cost.throughput_batch_size),
               "scratch": scratch / "export", "stages": []}  # fmt: skip
    return maker(int8=False).build(model, "fp32", example_batch(datamodule, 2), scratch / target, context).runner


def example_batch(datamodule: Any, size: int) -> Any:
    """`size` placeholder items collated as a served batch is: what an export traces and a warm-up runs."""
    if datamodule.modality == "text":
        item = datamodule.serve_item("an example text to trace the model with")
    else:
        item = torch.zeros(datamodule.input_shape)
    return collate(datamodule, [item] * size)


def collate(datamodule: Any, items: list[torch.Tensor]) -> Any:
    """Model-ready items (from `serve_item`) as one batch, the way the run's loaders make one."""
    if datamodule.collate is not None:
        return datamodule.collate([(item, torch.tensor(-1)) for item in items])[0]
    return torch.stack(items)


def buckets(served: dict[str, Any], chunk: int) -> list[int]:
    """Batch sizes a compiled model is warmed up for and padded to: powers of two up to the throughput batch
    (inductor compiles a graph per shape; a larger batch runs in chunks of that size). Other runtimes take any
    batch: one warm-up forward, no padding."""
    if served["runtime"] != "torch" or served["source"] == "checkpoint":
        return [1]
    sizes = [1]
    while sizes[-1] < chunk:
        sizes.append(sizes[-1] * 2)
    return sizes


def pad_to_bucket(inputs: Any, sizes: list[int]) -> Any:
    """A batch padded with copies of its first row to the next of `sizes`, so a compiled model meets only batch
    sizes it has compiled (a text batch's length still varies); the padding rows are dropped after."""
    if len(sizes) < 2:
        return inputs
    rows = int(next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0])
    target = next((size for size in sizes if size >= rows), rows)
    if isinstance(inputs, dict):
        return {key: torch.cat([value, value[:1].expand(target - rows, -1)]) for key, value in inputs.items()}
    return torch.cat([inputs, inputs[:1].expand(target - rows, *inputs.shape[1:])])
