"""What every deploy target shares: the built form of one variant, the ONNX export both non-torch runtimes start
from, and the record of a variant that cannot be built.

A target turns the run's final model (a plain `nn.Module`) into runners, one per variant. A runner takes the same
batch inputs as the torch model (a tensor, or a dict of tensors for text) and returns logits as a torch tensor,
so `evaluation.predict_logits` and `cost.time_forward` score and time it exactly as they do the torch model.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trimlab.batches import Inputs, take

TEXT_INPUTS = ("input_ids", "attention_mask")


@dataclass
class Built:
    """One variant, ready to serve: the runner, the files a deployment ships, and how long loading them took."""

    runner: Callable[..., torch.Tensor]
    files: list[Path]
    load_time_s: float
    runtime: str
    version: str
    settings: dict[str, Any] = field(default_factory=dict)


class Target:
    """A runtime that can serve the model; `build` raises when a variant cannot be built (recorded, never fatal)."""

    name = "target"

    def variants(self, model: nn.Module, context: dict) -> list[str]:
        return ["fp32"]

    def build(self, model: nn.Module, variant: str, example: Inputs, folder: Path, context: dict) -> Built:
        raise NotImplementedError


def unsupported(err: BaseException) -> dict[str, str]:
    """The ledger entry of a variant the runtime or its exporter refused: the first line of why."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " / ".join(lines)[:300]  # a runtime's first line can be only where it was raised
    return {"status": "unsupported", "reason": f"{type(err).__name__}: {text}"}


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def refuse_exported(model: nn.Module) -> None:
    """An int8/bf16 stage's result is a `torch.export` program of quantized ops, which the ONNX exporter does not
    take; those runs are served by inductor only."""
    if isinstance(model, torch.fx.GraphModule):
        raise TypeError("an exported torch program (an int8/bf16 compression stage) cannot be exported to ONNX")


class Positional(nn.Module):
    """A text model called with positional tensors: what an ONNX graph's inputs are."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def input_names(example: Inputs) -> list[str]:
    if isinstance(example, dict):
        if sorted(example) != sorted(TEXT_INPUTS):
            raise TypeError(f"batch inputs {sorted(example)} are not {list(TEXT_INPUTS)}: no ONNX signature for them")
        return list(TEXT_INPUTS)
    return ["input"]


def as_arrays(inputs: Inputs) -> dict[str, Any]:
    """A batch as numpy arrays keyed by the ONNX graph's input names."""
    if isinstance(inputs, dict):
        return {key: inputs[key].detach().cpu().numpy() for key in TEXT_INPUTS}
    return {"input": inputs.detach().cpu().numpy()}


def onnx_source(model: nn.Module, context: dict) -> tuple[nn.Module, dict[str, str]]:
    """The model the ONNX-based runtimes export, and a note for the variant's settings. It is the run's final
    model, unless the last stage made an exported torch program of int8/bf16 ops, which no ONNX exporter takes:
    then the model that stage started from (pruned, distilled...), its int8 done by the runtime's own tools."""
    handed = context.get("before_export")
    if handed is None:
        return model, {}
    return handed, {"exported_from": f"the model before {context.get('export_stage')}"}


def onnx_file(model: nn.Module, example: Inputs, scratch: Path) -> Path:
    """`torch.onnx.export(dynamo=True)` with a dynamic batch (and sequence) dimension, once per model: both
    ONNX Runtime and OpenVINO read this file."""
    path = scratch / "model.onnx"
    if path.is_file():
        return path
    refuse_exported(model)
    names = input_names(example)
    sample = take(example, 2)  # two samples: a batch of 1 would be specialised as a constant
    batch = torch.export.Dim("batch", min=1, max=4096)
    if isinstance(sample, dict):
        length = torch.export.Dim("length", min=2, max=4096)
        module, args = Positional(model), tuple(sample[key].clone() for key in names)
        shapes = {key: {0: batch, 1: length} for key in names}
    else:
        module, args, shapes = model, (sample.clone(),), {"x": {0: batch}}
        shapes = (shapes["x"],)
    scratch.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            module, args, dynamo=True, dynamic_shapes=shapes, input_names=names, output_names=["logits"],
            external_data=False, verbose=False,
        )  # fmt: skip
        program.save(str(path))
    return path


def timed(load: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    loaded = load()
    return loaded, round(time.perf_counter() - start, 4)
