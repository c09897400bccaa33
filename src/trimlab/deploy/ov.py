"""OpenVINO on CPU: the exported ONNX graph compiled at OpenVINO's default precision (bf16 on CPUs with AMX or
AVX512-BF16, f32 elsewhere), and with f32 forced, so the ledger shows what the default precision costs in accuracy.
The artifact is OpenVINO's own IR (model.xml + model.bin, weights kept f32)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trimlab.batches import Inputs
from trimlab.deploy.base import Built, Target, as_arrays, onnx_file, timed, version

HINTS = {"default": {}, "fp32": {"INFERENCE_PRECISION_HINT": "f32"}}


class OpenVino(Target):
    """`core.compile_model(core.read_model(<onnx>), "CPU")`, default precision and f32."""

    name = "openvino"

    def variants(self, model: nn.Module) -> list[str]:
        return list(HINTS)

    def build(self, model: nn.Module, variant: str, example: Inputs, folder: Path, context: dict) -> Built:
        import openvino

        source = onnx_file(model, example, context["scratch"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.xml"
        openvino.save_model(openvino.Core().read_model(str(source)), str(path), compress_to_fp16=False)
        config = {**HINTS[variant], "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        runner, load_s = timed(lambda: Compiled(path, config))
        settings = {**HINTS[variant], "precision": runner.precision}
        return Built(runner, [path, path.with_suffix(".bin")], load_s, "openvino", version("openvino"), settings)


class Compiled:
    """One compiled model and its infer request; the output is copied out (the request reuses its buffer)."""

    def __init__(self, path: Path, config: dict) -> None:
        import openvino

        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # "bf16", "f32"

    def __call__(self, input: torch.Tensor | None = None, **named: torch.Tensor) -> torch.Tensor:  # noqa: A002
        self.request.infer(as_arrays(named if input is None else input))
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())
