"""Live metrics (torchmetrics, every split) and the test-time report (scikit-learn, from gathered probabilities).

Both are computed at test so they can be checked against each other: the summary carries torchmetrics' values
under `test/*` and scikit-learn's classification report, ROC AUC and confusion matrix beside them.
"""

from __future__ import annotations

import numpy as np
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def classification_metrics(num_classes: int, prefix: str, with_auroc: bool = True) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
        "recall_macro": MulticlassRecall(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
    }
    if with_auroc:
        metrics["auroc_macro"] = MulticlassAUROC(num_classes, average="macro", thresholds=None)
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
    try:
        if len(labels) == 2:  # one-vs-rest AUROC of either class is the binary AUROC
            auroc = float(roc_auc_score(targets, scores[:, 1]))
        else:
            auroc = float(roc_auc_score(targets, scores, multi_class="ovr", average="macro", labels=labels))
    except ValueError:  # a class absent from the test targets: ROC AUC is undefined for it
        auroc = float("nan")
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
