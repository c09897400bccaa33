"""ONNX Runtime: the exported ONNX graph in fp32, and int8 by ONNX Runtime's own quantization tools.

int8 is static QDQ (per-channel weights, activation ranges calibrated on train batches, after `quant_pre_process`)
for conv models, where calibrated activations pay off, and dynamic (weights int8, activations quantized per
batch) for Linear-heavy models such as the text encoder, whose activation ranges vary with the input.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from trimlab.batches import Inputs
from trimlab.deploy.base import Built, Target, as_arrays, onnx_file, onnx_source, timed, version


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


class OnnxRuntime(Target):
    """fp32, and int8 (static QDQ for conv models, dynamic otherwise) when `int8` is set."""

    name = "onnxruntime"

    def __init__(self, int8: bool = True, calibration_batches: int = 16) -> None:
        self.int8, self.calibration_batches = int8, calibration_batches

    def variants(self, model: nn.Module, context: dict) -> list[str]:
        return ["fp32", "int8"] if self.int8 else ["fp32"]

    def build(self, model: nn.Module, variant: str, example: Inputs, folder: Path, context: dict) -> Built:
        model, settings = onnx_source(model, context)
        source = onnx_file(model, example, context["scratch"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ("model.onnx" if variant == "fp32" else "model.int8.onnx")
        if variant == "fp32":
            shutil.copyfile(source, path)
        elif has_conv(model):
            quantize_static_qdq(source, path, context["calibration"][: self.calibration_batches], folder)
            settings.update(quantization="static QDQ, per-channel", calibration_batches=self.calibration_batches)
        else:
            quantize_dynamic_int8(source, path)
            settings.update(quantization="dynamic, int8 weights")
        runner, load_s = timed(lambda: Session(path))
        return Built(runner, [path], load_s, "onnxruntime", version("onnxruntime"), settings)


def quantize_static_qdq(source: Path, path: Path, batches: list[Inputs], folder: Path) -> None:
    """`quant_pre_process` (shape inference, graph optimisation), then QDQ int8 with per-channel weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(as_arrays(batch) for batch in batches)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    prepared = folder / "prepared.onnx"
    try:
        quant_pre_process(str(source), str(prepared))
    except Exception:  # noqa: BLE001 - ONNX Runtime's symbolic shape inference knows no STFT (log-mel front ends)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=front_end_nodes(prepared),
        )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)


def front_end_nodes(path: Path) -> list[str]:
    """The nodes before the first convolution: a feature front end (a speech model's STFT, mel filterbank and
    log) whose values span orders of magnitude no int8 scale holds. They stay fp32; int8 starts at the body."""
    import onnx

    names = []
    for node in onnx.load(str(path)).graph.node:  # stored in topological order
        if node.op_type == "Conv":
            return names
        names.append(node.name)
    return []  # no convolution: nothing is a front end


def quantize_dynamic_int8(source: Path, path: Path) -> None:
    """int8 weights, activations quantized per batch. The exporter's stored intermediate shapes are dropped first:
    ONNX's shape inference, which the quantizer reruns, can disagree with them on dynamic dimensions."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    del model.graph.value_info[:]
    stripped = path.with_name("stripped.onnx")
    onnx.save(model, str(stripped))
    try:
        quantize_dynamic(str(stripped), str(path), weight_type=QuantType.QInt8)
    finally:
        stripped.unlink(missing_ok=True)


class Session:
    """An ONNX Runtime session with as many intra-op threads as torch uses: the timing protocol's threads. They
    spin between runs (fastest alone on the cores) unless OMP_WAIT_POLICY=PASSIVE, which the server sets."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # idle threads sleep, as OpenMP's then do
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input: torch.Tensor | None = None, **named: torch.Tensor) -> torch.Tensor:  # noqa: A002
        arrays = as_arrays(named if input is None else input)
        return torch.from_numpy(self.session.run(None, arrays)[0])
