"""Inductor: the model `torch.compile`d with freezing (weights folded in as constants), as `cost.compiled_timings`
times it. Its fp32 variant (the trained model) is the baseline every other variant's ratios are taken against;
it takes any final model, exported int8 programs included. Its artifact is the model as trimlab saves it
(`compression.artifact`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trimlab.batches import Inputs, forward, take
from trimlab.compression import artifact
from trimlab.deploy.base import Built, Target, version


class Inductor(Target):
    """`fp32`: the trained model, the baseline. A compressed run adds `compressed`: its artifact as the chain saved
    it (`compressed/`), compiled as the ledger timed it (an int8 program with the quantizer's inductor pass)."""

    name = "inductor"

    def variants(self, model: nn.Module, context: dict) -> list[str]:
        return ["fp32", "compressed"] if context.get("artifact_dir") else ["fp32"]

    def build(self, model: nn.Module, variant: str, example: Inputs, folder: Path, context: dict) -> Built:
        if variant == "compressed":
            runner = Compiled(model, context.get("inductor") or {}, context.get("chunk", 64))
            return Built(runner, saved_files(context["artifact_dir"]), 0.0, "torch", version("torch"),
                         {"freezing": True, "dynamic": False, "stages": context.get("stages", [])})  # fmt: skip
        model = context.get("baseline_model") or model  # a compressed run's trained model, else the final one
        folder.mkdir(parents=True, exist_ok=True)
        saved = artifact.save(model, False, example, folder, [], context["max_length"])
        runner = Compiled(model, {}, context.get("chunk", 64))
        files = [folder / saved["file"], folder / artifact.RECIPE]
        return Built(runner, files, 0.0, "torch", version("torch"), {"freezing": True, "dynamic": False})


class Compiled:
    """`torch.compile(model, dynamic=False)` under inductor freezing: one graph per input shape, as the ledger's
    compiled timings use it. Freezing and the `inductor` settings (an int8 program's quantizer pass) are patched
    in only around the call that compiles a new shape: patching them around every call would put the patch's own
    cost into the timings, and compile options alone do not carry the quantizer pass through freezing.

    A batch larger than `chunk` (the throughput batch size) runs in chunks of that size, the last one padded:
    scoring the test set then reuses the graph the throughput timing compiled instead of compiling more."""

    def __init__(self, model: nn.Module, inductor: dict, chunk: int) -> None:
        import torch._dynamo

        torch._dynamo.reset()
        self.chunk, self.inductor, self.compiled_shapes = chunk, inductor, set()
        self.compiled = torch.compile(model, dynamic=False)

    def __call__(self, input: torch.Tensor | None = None, **named: torch.Tensor) -> torch.Tensor:  # noqa: A002
        inputs = named if input is None else input
        size = batch_size(inputs)
        with torch.no_grad():
            if size <= self.chunk:
                return self.run(inputs)
            pieces = []
            for start in range(0, size, self.chunk):
                piece = rows(inputs, start, start + self.chunk)
                pieces.append(self.run(take(piece, self.chunk))[: batch_size(piece)])
            return torch.cat(pieces)

    def run(self, inputs: Inputs) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        shape = tuple(v.shape for v in inputs.values()) if isinstance(inputs, dict) else inputs.shape
        if shape in self.compiled_shapes:
            return forward(self.compiled, inputs)
        with inductor_config.patch(freezing=True, **self.inductor):
            logits = forward(self.compiled, inputs)
        self.compiled_shapes.add(shape)
        return logits


def batch_size(inputs: Inputs) -> int:
    return int(next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0])


def rows(inputs: Inputs, start: int, stop: int) -> Inputs:
    return {key: value[start:stop] for key, value in inputs.items()} if isinstance(inputs, dict) else inputs[start:stop]


def saved_files(folder: Path) -> list[Path]:
    """A compressed run's artifact as the chain saved it (`compressed/`): shipped as is, not exported again."""
    import json

    recipe = json.loads((folder / artifact.RECIPE).read_text())
    return [folder / recipe["file"], folder / artifact.RECIPE]
