"""Inductor: the model `torch.compile`d with freezing (weights folded in as constants), as `cost.compiled_timings`
times it today. It is the baseline every other runtime's ratios are taken against, and it takes any final model,
exported int8 programs included. Its artifact is the model as trimlab saves it (`compression.artifact.save`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trimlab.batches import Inputs, forward, take
from trimlab.compression import artifact
from trimlab.deploy.base import Built, Target, version


class Inductor(Target):
    name = "inductor"

    def build(self, model: nn.Module, variant: str, example: Inputs, folder: Path, context: dict) -> Built:
        folder.mkdir(parents=True, exist_ok=True)
        exported = isinstance(model, torch.fx.GraphModule)
        saved = artifact.save(model, exported, example, folder, context.get("stages", []), context["max_length"])
        runner = Compiled(model, context.get("inductor") or {}, context.get("chunk", 64))
        files = [folder / saved["file"], folder / artifact.RECIPE]
        return Built(runner, files, 0.0, "torch", version("torch"), {"freezing": True, "dynamic": False})


class Compiled:
    """`torch.compile(model, dynamic=False)` under inductor freezing: one graph per input shape, as the ledger's
    compiled timings use it. Freezing and the `inductor` settings are this compile's own options: a config patch
    entered per call would change what the compiled graph was guarded on, and recompile it on every call.

    A batch larger than `chunk` (the throughput batch size) runs in chunks of that size, the last one padded:
    scoring the test set then reuses the graph the throughput timing compiled instead of compiling more."""

    def __init__(self, model: nn.Module, inductor: dict, chunk: int) -> None:
        import torch._dynamo

        torch._dynamo.reset()
        self.chunk = chunk
        self.compiled = torch.compile(model, dynamic=False, options={"freezing": True, **inductor})

    def __call__(self, input: torch.Tensor | None = None, **named: torch.Tensor) -> torch.Tensor:  # noqa: A002
        inputs = named if input is None else input
        size = batch_size(inputs)
        with torch.no_grad():
            if size <= self.chunk:
                return forward(self.compiled, inputs)
            pieces = []
            for start in range(0, size, self.chunk):
                piece = rows(inputs, start, start + self.chunk)
                pieces.append(forward(self.compiled, take(piece, self.chunk))[: batch_size(piece)])
            return torch.cat(pieces)


def batch_size(inputs: Inputs) -> int:
    return int(next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0])


def rows(inputs: Inputs, start: int, stop: int) -> Inputs:
    return {key: value[start:stop] for key, value in inputs.items()} if isinstance(inputs, dict) else inputs[start:stop]
