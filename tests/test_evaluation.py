"""One evaluation path: the trained task's test loop, a compressed model's ledger entry and trimlab-eval all score
a model with `evaluation.test_record`, so their figures compare (test/loss is plain cross-entropy in each)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from conftest import compose_train
from trimlab.evaluation import evaluate_model, test_record
from trimlab.factory import build


def test_the_record_scores_the_logits_it_is_given():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 2, 1])
    record = test_record(logits, targets, ["a", "b", "c"])
    assert record.metrics["test/acc"] == 0.75 == record.metrics["sklearn"]["acc"]
    assert abs(record.metrics["test/loss"] - float(F.cross_entropy(logits, targets))) < 1e-6
    assert record.metrics["test_samples"] == 4 and record.metrics["confusion_matrix"][1] == [1, 1, 0]
    assert record.probs.shape == (4, 3) and list(record.targets) == [0, 1, 2, 1]
    assert set(record.scores()) == {"test/acc", "test/precision_macro", "test/recall_macro", "test/f1_macro",
                                    "test/auroc_macro", "test/loss"}  # fmt: skip


def test_the_test_loop_and_a_direct_evaluation_agree_and_ignore_label_smoothing(tmp_path):
    cfg = compose_train("task.label_smoothing=0.3", "trainer.max_epochs=1", output_dir=tmp_path)
    pl.seed_everything(0)
    datamodule, task = build(cfg)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_train_batches=3, limit_val_batches=1)  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    trainer.test(task, datamodule=datamodule, verbose=False)
    direct = evaluate_model(task.backbone, datamodule)
    for key in ("test/acc", "test/f1_macro", "test/auroc_macro"):
        assert task.test_record.metrics[key] == direct.metrics[key], key
    assert abs(task.test_record.metrics["test/loss"] - direct.metrics["test/loss"]) < 1e-5
    with torch.no_grad():
        logits = torch.cat([task.backbone.eval()(x) for x, _ in datamodule.test_dataloader()])
    targets = torch.cat([y for _, y in datamodule.test_dataloader()])
    smoothed = float(F.cross_entropy(logits, targets, label_smoothing=0.3))
    assert abs(direct.metrics["test/loss"] - float(F.cross_entropy(logits, targets))) < 1e-5
    assert abs(direct.metrics["test/loss"] - smoothed) > 1e-3  # the smoothed loss would differ
