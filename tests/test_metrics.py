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
