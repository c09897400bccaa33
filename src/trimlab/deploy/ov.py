"""OpenVINO on CPU: the exported ONNX graph compiled at OpenVINO's default precision (bf16 on CPUs with AMX or
AVX512-BF16, f32 elsewhere), with f32 forced, so the ledger shows what the default precision costs in accuracy,
and int8 by NNCF's post-training quantization calibrated on train batches. The artifact is OpenVINO's own IR
(model.xml + model.bin, weights kept f32 unless quantized)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trimlab.batches import Inputs, take
from trimlab.deploy.base import Built, Target, as_arrays, input_names, onnx_file, onnx_source, timed, version

log = logging.getLogger(__name__)
HINTS = {"default": {}, "fp32": {"INFERENCE_PRECISION_HINT": "f32"}, "int8": {}}


class OpenVino(Target):
    """`core.compile_model(core.read_model(<onnx>), "CPU")`: default precision, f32, and NNCF int8 if `int8`."""

    name = "openvino"

    def __init__(self, int8: bool = True, calibration_batches: int = 16) -> None:
        self.int8, self.calibration_batches = int8, calibration_batches

    def variants(self, model: nn.Module, context: dict) -> list[str]:
        return list(HINTS) if self.int8 else ["default", "fp32"]

    def build(self, model: nn.Module, variant: str, example: Inputs, folder: Path, context: dict) -> Built:
        import openvino

        model, settings = onnx_source(model, context)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.xml"
        graph, settings["read_from"] = read_graph(model, example, context)
        if variant == "int8":
            graph = quantize_nncf(graph, context["calibration"][: self.calibration_batches], isinstance(example, dict))
            settings.update(quantization="NNCF post-training, static", calibration_batches=self.calibration_batches)
        openvino.save_model(graph, str(path), compress_to_fp16=False)
        config = {**HINTS[variant], "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        runner, load_s = timed(lambda: Compiled(path, config))
        settings.update({**HINTS[variant], "precision": runner.precision})
        return Built(runner, [path, path.with_suffix(".bin")], load_s, "openvino", version("openvino"), settings)


def read_graph(model: nn.Module, example: Inputs, context: dict) -> tuple[Any, str]:
    """The ONNX export read by OpenVINO's ONNX frontend; when that frontend refuses a node (the STFT of a speech
    model's log-mel front end wants a static signal shape), OpenVINO's own conversion from the torch model."""
    import openvino

    try:
        return openvino.Core().read_model(str(onnx_file(model, example, context["scratch"]))), "onnx"
    except RuntimeError as err:
        log.info("OpenVINO's ONNX frontend refused the export (%s); converting from torch", str(err)[:200])
    sample = take(example, 2)
    graph = openvino.convert_model(model, example_input=sample if isinstance(sample, dict) else (sample,))
    for port, name in zip(graph.inputs, input_names(example), strict=True):  # the names the runner feeds
        port.get_tensor().set_names({name})
    return graph, "torch"


def quantize_nncf(graph, batches: list[Inputs], text: bool):
    """NNCF's min-max post-training int8 over the calibration batches (the transformer preset for text)."""
    import nncf

    samples = sum(int(next(iter(b.values())).shape[0]) if isinstance(b, dict) else int(b.shape[0]) for b in batches)
    front_end = [op.get_friendly_name() for op in ops_before_first_convolution(graph)]
    return nncf.quantize(
        graph, nncf.Dataset(batches, as_arrays), subset_size=max(1, samples),
        model_type=nncf.ModelType.TRANSFORMER if text else None,
        ignored_scope=nncf.IgnoredScope(names=front_end, validate=False) if front_end else None,
    )  # fmt: skip


def ops_before_first_convolution(graph) -> list:
    """A feature front end (a speech model's STFT, mel filterbank and log) stays f32, as in ONNX Runtime's int8
    (`ort.front_end_nodes`); none when the graph has no convolution."""
    ops = list(graph.get_ordered_ops())
    first = next((i for i, op in enumerate(ops) if op.get_type_name() == "Convolution"), None)
    return ops[:first] if first else []


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
