"""One test record for every model trimlab tests: the trained task (at the end of Lightning's test loop), each
compressed or exported model of the ledger, and a re-tested run (trimlab-eval).

All of them compute it here, from the logits over the test split, so the figures in one summary compare: the same
metrics, and `test/loss` as plain cross-entropy (label smoothing is a training choice, not part of the score).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trimlab.batches import forward
from trimlab.metrics import classification_metrics, sklearn_report

SKLEARN_SCORES = ("acc", "precision_macro", "recall_macro", "f1_macro", "auroc_macro")


@dataclass
class TestRecord:
    """`metrics` as the summary stores them; `probs` and `targets` for the plots and predictions.csv."""

    __test__ = False  # not a pytest test class
    metrics: dict[str, Any]
    probs: np.ndarray
    targets: np.ndarray

    def scores(self) -> dict[str, float]:
        """The scalar `test/*` values: what loggers and the progress bar show."""
        return {k: v for k, v in self.metrics.items() if k.startswith("test/") and isinstance(v, float)}


def test_record(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> TestRecord:
    """torchmetrics' scores, the loss, and scikit-learn's report of the same predictions, side by side."""
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    probs = logits.softmax(-1)
    collection = classification_metrics(len(class_names), "test/")
    collection.update(probs, targets)
    metrics: dict[str, Any] = {k: float(v) for k, v in collection.compute().items()}
    metrics["test/loss"] = float(F.cross_entropy(logits, targets))
    report = sklearn_report(probs.numpy(), targets.numpy(), class_names)
    metrics["sklearn"] = {k: report[k] for k in SKLEARN_SCORES}
    metrics.update(per_class=report["per_class"], confusion_matrix=report["confusion_matrix"])
    metrics["test_samples"] = int(len(targets))
    return TestRecord(metrics, probs.numpy(), targets.numpy())


test_record.__test__ = False  # a function named test_*: not a pytest test


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: Any, precision: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets over a loader, in the run's precision context (a Lightning precision plugin) if given."""
    logits, targets = [], []
    with precision.forward_context() if precision is not None else nullcontext():
        for inputs, target in loader:
            inputs = precision.convert_input(inputs) if precision is not None else inputs
            logits.append(forward(model, inputs).float().cpu())
            targets.append(target.cpu())
    return torch.cat(logits), torch.cat(targets)


def evaluate_model(model: nn.Module, datamodule: Any, precision: Any = None) -> TestRecord:
    """The test record of any callable model: eager, exported or quantized."""
    logits, targets = predict_logits(in_eval_mode(model), datamodule.test_dataloader(), precision)
    return test_record(logits, targets, datamodule.class_names)


def val_metrics(model: nn.Module, datamodule: Any, precision: Any = None) -> dict[str, float]:
    """Accuracy and loss on the validation split, of the same model as the test record: what a search selects
    on (hparams_search=cheapest_within), so that the test split is only reported, never chosen by."""
    logits, targets = predict_logits(in_eval_mode(model), datamodule.val_dataloader(), precision)
    return {"val/acc": float((logits.argmax(-1) == targets).float().mean()),
            "val/loss": float(F.cross_entropy(logits, targets))}  # fmt: skip


def in_eval_mode(model: Any) -> Any:
    # An exported program refuses .eval() (it is fixed already); a deployed runtime's runner has none.
    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model.eval()
    return model
