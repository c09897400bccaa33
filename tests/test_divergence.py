"""A loss that becomes NaN or inf stops the fit at once: `failed` with the step and what to change, and the last
checkpoint still holds finite weights."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import compose_train
from trimlab.guards import Diverged
from trimlab.pipeline import train
from trimlab.task import ClassificationTask


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_the_fit(tmp_path, monkeypatch, bad):
    real_loss = ClassificationTask.loss

    def loss_that_diverges(self, logits, target):
        loss = real_loss(self, logits, target)
        return loss * bad if self.training and self.current_epoch == 1 and self.global_step >= 50 else loss

    monkeypatch.setattr(ClassificationTask, "loss", loss_that_diverges)
    cfg = compose_train("callbacks.progress_bar=null", "trainer.max_epochs=4", output_dir=tmp_path)
    with pytest.raises(Diverged) as raised:
        train(cfg, tmp_path, "nan00000")
    value = "nan" if bad != bad else "inf"
    message = str(raised.value)
    assert message.startswith(f"loss became {value} at step 50 (epoch 1); ")
    assert message.endswith("lower task.optimizer.lr or set trainer.gradient_clip_val")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(t).all() for t in last["state_dict"].values())
