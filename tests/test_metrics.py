from __future__ import annotations

import numpy as np
import pytest
import torch

from trimlab.metrics import classification_metrics, sklearn_report


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_torchmetrics_and_sklearn_agree(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    targets = torch.arange(400) % num_classes
    logits = torch.randn(400, num_classes, generator=generator) + 1.5 * torch.nn.functional.one_hot(
        targets, num_classes
    )
    probs = logits.softmax(-1)
    collection = classification_metrics(num_classes, "test/")
    collection.update(probs, targets)
    live = {k: float(v) for k, v in collection.compute().items()}
    report = sklearn_report(probs.numpy(), targets.numpy(), [str(i) for i in range(num_classes)])
    for key in ("acc", "precision_macro", "recall_macro", "f1_macro", "auroc_macro"):
        assert live[f"test/{key}"] == pytest.approx(report[key], abs=1e-6), key
    assert 0.4 < report["acc"] < 1.0  # a non-trivial case: the check can fail
    assert np.array(report["confusion_matrix"]).sum() == 400
    assert set(report["per_class"]) >= {"0", "macro avg", "weighted avg"}


def test_auroc_averages_over_the_classes_present():
    from sklearn.metrics import roc_auc_score

    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(300) % 4  # classes 0-3 of 6: 4 and 5 never occur
    probs = (torch.randn(300, 6, generator=generator) + torch.nn.functional.one_hot(targets, 6)).softmax(-1)
    collection = classification_metrics(6, "test/")
    collection.update(probs, targets)
    live = float(collection.compute()["test/auroc_macro"])
    expected = np.mean([roc_auc_score(targets.numpy() == c, probs[:, c].numpy()) for c in range(4)])
    report = sklearn_report(probs.numpy(), targets.numpy(), [str(i) for i in range(6)])
    assert live == pytest.approx(expected, abs=1e-6) and report["auroc_macro"] == pytest.approx(expected, abs=1e-6)
    assert 0.6 < expected < 1.0  # absent classes counted as 0 would give at most 2/3 of this
