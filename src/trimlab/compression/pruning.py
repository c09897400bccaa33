"""Pruning. `prune`: unstructured L1 magnitude (zeros in dense tensors: smaller when stored sparse, no faster
with dense kernels). `prune_structured`: Torch-Pruning removes whole channels along the dependency graph (the
model gets physically smaller and faster), then fine-tunes.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from trimlab.batches import first_test_inputs
from trimlab.compression.base import (
    Context,
    Stage,
    check_count,
    check_positive,
    check_range,
    classifier_head,
    target_modules,
)
from trimlab.errors import ConfigError

Targets = list[tuple[nn.Module, str]]


def prune_to(targets: Targets, sparsity: float, scope: str) -> None:
    """Zero exactly round(sparsity × size) of the targeted weights, smallest |w| first, and make it permanent.

    The fraction is absolute, not compounded: calling again with a higher value extends the same zeros (they
    have the smallest magnitude). Global scope never empties a layer: each keeps its largest weight."""
    if scope == "layer":
        for module, name in targets:
            torch_prune.l1_unstructured(module, name, amount=round(sparsity * getattr(module, name).numel()))
    else:
        total = sum(getattr(m, n).numel() for m, n in targets)
        scores = {}
        for module, name in targets:
            score = getattr(module, name).detach().abs().clone()
            score.view(-1)[score.argmax()] = math.inf
            scores[(module, name)] = score
        torch_prune.global_unstructured(
            targets, pruning_method=torch_prune.L1Unstructured, importance_scores=scores,
            amount=round(sparsity * total),
        )  # fmt: skip
    for module, name in targets:
        torch_prune.remove(module, name)  # weight = weight_orig × mask: state_dict keys stay the plain model's


def sparsity_of(targets: Targets) -> float:
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    return zeros / max(1, sum(getattr(m, n).numel() for m, n in targets))


class GradualPruning(pl.Callback):
    """Cubic schedule (Zhu & Gupta 2017): s(t) = s_f·(1 − (1 − t/T)³), updated `updates` times up to step T =
    `end_fraction` of the fit, then held. Masks are re-applied after every optimizer step: the weights the
    optimizer moves off zero go back to zero."""

    def __init__(self, targets: Targets, sparsity: float, scope: str, updates: int, end_fraction: float) -> None:
        self.targets, self.sparsity, self.scope = targets, sparsity, scope
        self.updates, self.end_fraction = max(1, updates), end_fraction
        self.masks: list[torch.Tensor] = []
        self.current = 0.0

    def target_at(self, step: int, total: int) -> float:
        end = max(1, int(self.end_fraction * total))
        every = max(1, end // self.updates)
        step = min(end, (step // every) * every if step < end else end)
        return self.sparsity * (1 - (1 - step / end) ** 3)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        wanted = self.target_at(trainer.global_step, int(trainer.estimated_stepping_batches))
        if wanted > self.current or not self.masks:
            prune_to(self.targets, wanted, self.scope)
            self.masks = [getattr(m, n).detach() != 0 for m, n in self.targets]
            self.current = wanted

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():
            for (module, name), mask in zip(self.targets, self.masks, strict=True):
                getattr(module, name).mul_(mask)


class Prune(Stage):
    def __init__(
        self,
        sparsity: float = 0.5,
        scope: str = "global",
        schedule: str = "gradual",
        epochs: int = 2,
        modules: list[str] | None = None,
        parameters: list[str] | None = None,
        updates: int = 10,
        end_fraction: float = 0.75,
        lr_factor: float = 0.1,
    ) -> None:
        self.sparsity = float(sparsity)  # its range is declared in conf/compression/prune.yaml
        if scope not in ("global", "layer"):
            raise ConfigError(f"compression.prune.scope={scope!r}: use global or layer")
        if schedule not in ("one_shot", "gradual"):
            raise ConfigError(f"compression.prune.schedule={schedule!r}: use one_shot or gradual")
        self.scope, self.schedule, self.epochs = scope, schedule, check_count("prune.epochs", epochs, 0)
        self.modules = list(modules or ["Linear", "Conv1d", "Conv2d"])
        unknown = [kind for kind in self.modules if not isinstance(getattr(nn, kind, None), type)]
        if unknown:
            raise ConfigError(f"compression.prune.modules: {unknown} are not torch.nn layer classes (e.g. Linear)")
        self.parameters = list(parameters or ["weight"])
        self.updates = check_count("prune.updates", updates, 1)
        self.end_fraction = check_range("prune.end_fraction", end_fraction, 1e-9, 1.0 + 1e-9, "a fraction in (0, 1]")
        self.lr_factor = check_positive("prune.lr_factor", lr_factor)
        self.reached: dict[str, Any] = {}

    def targets(self, model: nn.Module) -> Targets:
        found = [
            (module, name)
            for _, module in target_modules(model, self.modules)
            for name in self.parameters
            if isinstance(getattr(module, name, None), torch.Tensor)
        ]
        if not found:
            raise ConfigError(f"compression.prune: the model has no {self.parameters} in {self.modules} to prune")
        return found

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        targets = self.targets(model)
        if self.schedule == "gradual" and self.epochs > 0:
            callback = GradualPruning(targets, self.sparsity, self.scope, self.updates, self.end_fraction)
            model = context.finetune(model, self.epochs, [callback], self.lr_factor)
        else:
            prune_to(targets, self.sparsity, self.scope)
            if self.epochs > 0:  # one shot, then fine-tune with the mask held
                callback = GradualPruning(targets, self.sparsity, self.scope, 1, 1e-9)
                model = context.finetune(model, self.epochs, [callback], self.lr_factor)
        prune_to(targets, self.sparsity, self.scope)  # exact, whatever the fine-tune's last step left
        self.reached = {"target_sparsity": self.sparsity, "sparsity": round(sparsity_of(targets), 6),
                        "pruned_tensors": len(targets), "scope": self.scope, "schedule": self.schedule}  # fmt: skip
        return model

    def facts(self) -> dict[str, Any]:
        return {**self.reached, "note": "zeros in dense tensors: no speedup with dense kernels; see sparse_size_bytes"}


class PruneStructured(Stage):
    """Channel pruning with Torch-Pruning (L2 magnitude), classifier output kept; the pruned shapes are saved
    with the weights, so the model rebuilds from the run dir (`artifact.resize_to`)."""

    def __init__(self, channel_ratio: float = 0.5, epochs: int = 2, lr_factor: float = 0.3) -> None:
        self.ratio = float(channel_ratio)  # its range is declared in conf/compression/prune_structured.yaml
        self.epochs = check_count("prune_structured.epochs", epochs, 0)
        self.lr_factor = check_positive("prune_structured.lr_factor", lr_factor)
        self.reached: dict[str, Any] = {}

    def pruner(self, model: nn.Module, example: Any):
        import torch_pruning as tp

        return tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=self.ratio,
            ignored_layers=ignored_layers(model),
        )  # fmt: skip

    def check(self, datamodule: Any, model: nn.Module) -> None:
        if not getattr(model, "prunable_channels", True):  # the model contract's opt-out (a pretrained encoder)
            raise ConfigError(
                f"prune_structured cannot prune {type(model).__name__} (a pretrained encoder's attention heads "
                "would be cut unevenly); distill it into model=transformer and prune that, or use prune"
            )
        self.check_model(model.eval(), example_batch(first_test_inputs(datamodule)))
        model.train()

    def check_model(self, model: nn.Module, example: Any) -> None:
        """Torch-Pruning silently skips a group it would empty; say so instead."""
        import torch_pruning as tp

        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        for group in graph.get_all_groups(
            ignored_layers=ignored_layers(model), root_module_types=[nn.Conv2d, nn.Conv1d, nn.Linear]
        ):
            root, handler = group[0].dep.target.module, group[0].dep.handler
            out = graph.is_out_channel_pruning_fn(handler)
            channels = graph.get_out_channels(root) if out else graph.get_in_channels(root)
            if channels is not None and int(channels * (1 - self.ratio)) < 1:
                raise ConfigError(
                    f"compression.prune_structured.channel_ratio={self.ratio} would remove every channel of "
                    f"{type(root).__name__} ({channels} channels); use a ratio of at most {1 - 1 / channels:.3f}"
                )

    def apply(self, model: nn.Module, context: Context) -> nn.Module:
        import torch_pruning as tp

        example = example_batch(context.sample)
        self.check_model(model.eval(), example)
        before = dict(zip(("macs", "params"), tp.utils.count_ops_and_params(model, example), strict=True))
        self.pruner(model, example).step()
        after = dict(zip(("macs", "params"), tp.utils.count_ops_and_params(model, example), strict=True))
        if self.epochs > 0:
            model = context.finetune(model, self.epochs, [], self.lr_factor)
        self.reached = {"channel_ratio": self.ratio, **{f"{k}_before": int(v) for k, v in before.items()},
                        **{f"{k}_after": int(v) for k, v in after.items()}}  # fmt: skip
        return model

    def facts(self) -> dict[str, Any]:
        return self.reached


def ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The classifier keeps its outputs (one per class). Transformer blocks: only the feed-forward hidden width
    is pruned — attention heads and the embedding width are coupled in ways the model's stored head count
    would not follow."""
    ignored = [head] if (head := classifier_head(model)) is not None else []
    blocks = getattr(model, "blocks", None)
    if blocks is not None and all(hasattr(block, "mlp") for block in blocks):
        keep = {block.mlp[0] for block in blocks}
        ignored += [
            m for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding | nn.LayerNorm) and m not in keep
        ]
    return ignored


def example_batch(sample: Any) -> Any:
    """Two samples of a batch: enough to trace the graph, cheap to run."""
    if isinstance(sample, dict):
        return {key: value[:2] for key, value in sample.items()}
    return sample[:2]
