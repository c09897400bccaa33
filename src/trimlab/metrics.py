"""Live metrics (torchmetrics, every split) and the test-time report (scikit-learn, from gathered probabilities).

Both are computed at test so they can be checked against each other: the summary carries torchmetrics' values
under `test/*` and scikit-learn's classification report, ROC AUC and confusion matrix beside them.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities import dim_zero_cat


class PresentClassAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes that occur in the targets.

    A class with no positive example has no ROC curve; torchmetrics' macro average scores it 0, which on a small
    test set that lacks a few classes (Speech Commands) drags the mean far down for no fault of the model."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, average="none", thresholds=None)

    def compute(self) -> torch.Tensor:
        per_class = super().compute()
        present = torch.bincount(dim_zero_cat(self.target).long(), minlength=self.num_classes) > 0
        return per_class[present].mean()


def classification_metrics(num_classes: int, prefix: str, with_auroc: bool = True) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
        "recall_macro": MulticlassRecall(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
    }
    if with_auroc:
        metrics["auroc_macro"] = PresentClassAUROC(num_classes)
    return MetricCollection(metrics, prefix=prefix)


def sklearn_report(probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict:
    """scikit-learn's view of the same predictions: summary scores, per-class report, confusion matrix."""
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = list(range(len(class_names)))
    preds = probs.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        targets, preds, labels=labels, average="macro", zero_division=0
    )
    scores = probs.astype(np.float64)
    # One-vs-rest per class, averaged over the classes present (an absent class has no ROC curve).
    per_class = [
        roc_auc_score(targets == label, scores[:, label])
        for label in labels
        if 0 < (targets == label).sum() < len(targets)
    ]
    auroc = float(np.mean(per_class)) if per_class else float("nan")
    return {
        "acc": float(accuracy_score(targets, preds)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "auroc_macro": auroc,
        "per_class": classification_report(
            targets, preds, labels=labels, target_names=class_names, output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(targets, preds, labels=labels).tolist(),
    }
