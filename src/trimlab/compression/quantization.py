"""Quantization on PT2E (`torch.export` → prepare → calibrate or train → convert, x86 inductor quantizer) and
bf16. Every stage's result is an exported graph, deployed `torch.compile`d with inductor freezing: int8 in
eager mode is *slower* than fp32 on CPU; the speedup comes from the fused int8 kernels compile generates.
`torch.ao.quantization` eager/FX is deprecated and not used.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from trimlab.batches import first_test_inputs, forward
from trimlab.compression.artifact import export_program, strip_dead_weights
from trimlab.compression.base import Context, Stage, check_count, check_positive, max_length
from trimlab.errors import ConfigError

_LIFT_PASS: list[Any] = []  # the inductor pass torchao's x86 quantizer installs process-wide on import


def x86_quantizer_module():
    """Import torchao's x86 quantizer without its side effect: the import sets inductor's global
    `pre_grad_custom_pass`, which would then apply to every later compile; `inductor_options` scopes it."""
    import torch._inductor.config as inductor_config

    previous = inductor_config.pre_grad_custom_pass
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer

    if not _LIFT_PASS and inductor_config.pre_grad_custom_pass is not previous:
        _LIFT_PASS.append(inductor_config.pre_grad_custom_pass)
    inductor_config.pre_grad_custom_pass = previous
    return x86_inductor_quantizer


def inductor_options() -> dict[str, Any]:
    """Inductor settings for compiling a quantized graph (the quantizer's pass), applied only there."""
    return {"pre_grad_custom_pass": _LIFT_PASS[0]} if _LIFT_PASS else {}


def quantizer(dynamic: bool = False, qat: bool = False, skip: tuple[str, ...] = (), only: str | None = None):
    """The x86 quantizer for every layer but the modules named in `skip` (kept fp32), or for module `only`."""
    module = x86_quantizer_module()
    config = module.get_default_x86_inductor_quantization_config(is_dynamic=dynamic, is_qat=qat)
    if only is not None:
        return module.X86InductorQuantizer().set_module_name_qconfig(only, config)
    chosen = module.X86InductorQuantizer().set_global(config)
    for name in skip:
        chosen.set_module_name_qconfig(name, None)
    return chosen


def layer_names(model: nn.Module) -> list[str]:
    """The layers int8 acts on: convolutions and linear layers, by their module names."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear)]


def capture(model: nn.Module, context: Context) -> torch.fx.GraphModule:
    return export_program(model, context.sample, context.max_length).module()


def calibrate(prepared: nn.Module, context: Context, batches: int) -> None:
    """Observers see activations of train batches (never test ones)."""
    with torch.no_grad():
        for batch in islice(context.datamodule.train_dataloader(), max(1, batches)):
            forward(prepared, batch[0])


def int8_ops(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    counts = Counter(
        str(node.target).split(".")[1]
        for node in graph_module.graph.nodes
        if node.op == "call_function" and "quantized_decomposed" in str(node.target)
    )
    int8 = sum(1 for _, tensor in graph_module.named_buffers() if tensor.dtype == torch.int8)
    return {**dict(sorted(counts.items())), "int8_tensors": int8}


class Exported(Stage):
    """A stage whose result is an exported graph (its option file declares `exports`): the model must export,
    which is checked before training."""

    def check(self, datamodule: Any, model: nn.Module) -> None:
        export_program(model.eval(), first_test_inputs(datamodule), max_length(datamodule))
        model.train()


class QuantizeStatic(Exported):
    """`skip_sensitive=k`: the k layers whose int8 costs the most val accuracy stay fp32, as Intel Neural
    Compressor's tuning does. Each layer is quantized alone and scored on the validation split first (one
    calibration and one val pass per layer: cheap for the models here, linear in their layer count); equal
    accuracy losses are ranked by the rise in val loss, which moves before any prediction flips."""

    dynamic = False

    def __init__(self, calibration_batches: int = 32, skip_sensitive: int = 0) -> None:
        self.calibration_batches = check_count("calibration_batches", calibration_batches, 1)
        self.skip_sensitive = check_count("quantize_static.skip_sensitive", skip_sensitive, 0)
        self.ops: dict[str, int] = {}
        self.sensitivity: dict[str, tuple[float, float]] = {}  # layer -> (val acc lost in pt, val loss gained)

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        graph = capture(model.eval(), context)
        skipped = self.most_sensitive(graph, layer_names(model), context) if self.skip_sensitive else ()
        converted = self.quantized(graph, context, quantizer(dynamic=self.dynamic, skip=skipped))
        self.ops = int8_ops(converted)
        return converted

    def quantized(self, graph: torch.fx.GraphModule, context: Context, chosen: Any) -> torch.fx.GraphModule:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        prepared = prepare_pt2e(copy.deepcopy(graph), chosen)  # a copy: the graph is quantized once per layer
        calibrate(prepared, context, self.calibration_batches)
        return strip_dead_weights(convert_pt2e(prepared))

    def most_sensitive(self, graph: torch.fx.GraphModule, layers: list[str], context: Context) -> tuple[str, ...]:
        """The `skip_sensitive` layers whose int8 alone loses the most val accuracy (points, in `sensitivity`)."""
        from trimlab.evaluation import val_metrics

        reference = val_metrics(graph, context.datamodule)
        for name in layers:
            alone = val_metrics(self.quantized(graph, context, quantizer(dynamic=self.dynamic, only=name)),
                                context.datamodule)  # fmt: skip
            self.sensitivity[name] = (round(100 * (reference["val/acc"] - alone["val/acc"]), 3),
                                      round(alone["val/loss"] - reference["val/loss"], 6))  # fmt: skip
        return tuple(self.ranked()[: self.skip_sensitive])

    def ranked(self) -> list[str]:
        return sorted(self.sensitivity, key=lambda name: self.sensitivity[name], reverse=True)

    def facts(self) -> dict[str, Any]:
        facts = {"int8_ops": self.ops, "activations": "dynamic" if self.dynamic else "static (calibrated)"}
        if self.skip_sensitive:
            facts.update(kept_fp32=self.ranked()[: self.skip_sensitive],
                         int8_val_acc_loss_pt={name: acc for name, (acc, _) in self.sensitivity.items()},
                         int8_val_loss_rise={name: loss for name, (_, loss) in self.sensitivity.items()})  # fmt: skip
        return facts


class QuantizeDynamic(QuantizeStatic):
    dynamic = True

    def __init__(self, calibration_batches: int = 1, skip_sensitive: int = 0) -> None:
        super().__init__(calibration_batches, skip_sensitive)


class TrainableGraph(nn.Module):
    """An exported graph that Lightning can switch between train and eval: exported programs refuse
    `.train()`/`.eval()`; PT2E moves batch-norm and dropout between modes by rewriting the graph."""

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph_module

    def train(self, mode: bool = True) -> TrainableGraph:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph_module)
        self.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.graph_module(*args, **kwargs)


class BestOnVal(pl.Callback):
    """Keeps the weights of the epoch with the lowest val/loss and ends the fit with them: the fine-tune's length
    is chosen on validation, not fixed."""

    def __init__(self) -> None:
        self.loss, self.epoch, self.state = math.inf, None, None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking and float(loss) < self.loss:
            self.loss, self.epoch = float(loss), int(trainer.current_epoch)
            self.state = copy.deepcopy(pl_module.backbone.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is not None:
            pl_module.backbone.load_state_dict(self.state)


class QuantizationAwareTraining(QuantizeStatic):
    """Fake-quantized fine-tuning, so the weights learn to live with int8 rounding; then converted to int8. The
    fine-tune runs once per learning rate (the task's × each of `lr_factors`), each for up to `epochs` epochs,
    and the run keeps the rate and epoch with the lowest val/loss: QAT wants a far smaller rate than training,
    and which one depends on the model."""

    def __init__(self, epochs: int = 2, lr_factors: Any = (0.01, 0.1), calibration_batches: int = 8) -> None:
        super().__init__(calibration_batches)
        self.epochs = check_count("qat.epochs", epochs, 1)
        if isinstance(lr_factors, str | int | float) or not len(lr_factors):  # a list (or Hydra's ListConfig)
            raise ConfigError(f"compression.qat.lr_factors={lr_factors!r} must be a list of rates, e.g. [0.01,0.1]")
        self.lr_factors = [check_positive("qat.lr_factors[]", f) for f in lr_factors]
        self.chosen: dict[str, Any] = {}

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

        prepared = TrainableGraph(prepare_qat_pt2e(capture(model.train(), context), quantizer(qat=True)))
        calibrate(prepared.eval(), context, self.calibration_batches)  # initial ranges before the first step
        tried = []
        for factor in self.lr_factors:
            best = BestOnVal()
            tuned = context.finetune(copy.deepcopy(prepared), self.epochs, [best], factor)
            tried.append((best.loss, factor, best.epoch, tuned))
        loss, factor, epoch, prepared = min(tried, key=lambda t: t[0])
        losses = {str(f): round(v, 5) if math.isfinite(v) else None for v, f, _, _ in tried}  # None: no validation
        self.chosen = {"qat_lr_factor": factor, "qat_best_epoch": epoch, "qat_val_loss": losses}
        prepared.eval()
        converted = strip_dead_weights(convert_pt2e(prepared.graph_module))
        self.ops = int8_ops(converted)
        return converted

    def facts(self) -> dict[str, Any]:
        return {"int8_ops": self.ops, "qat_epochs": self.epochs, **self.chosen}


def cast_inputs(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Float inputs enter in `dtype`, logits leave as float32: hooks (which export traces) keep the model's own
    signature, so the exported program takes the same inputs as the fp32 model."""

    def cast(value: Any) -> Any:
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    model.register_forward_pre_hook(
        lambda _, args, kwargs: (tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}),
        with_kwargs=True,
    )
    model.register_forward_hook(lambda _, args, output: output.float())
    return model


class BFloat16(Exported):
    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        return capture(cast_inputs(model.eval().to(torch.bfloat16), torch.bfloat16), context)

    def facts(self) -> dict[str, Any]:
        return {"dtype": "bfloat16"}
