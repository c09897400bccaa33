"""The speedup methods act: channels-last tensors are in that order, small images reach a training forward, frozen
layers get no gradients, the large batch scales and ramps the rate, the fit stops at its target, EMA weights
differ from the raw ones; a method that cannot apply fails before training; time to an absolute target."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import assert_clear_error, compose_train, run_cli
from trimlab import speedup
from trimlab.cost import RunClock
from trimlab.errors import ConfigError
from trimlab.schema import parse_target
from trimlab.speedup.feature_cache import FeatureCache
from trimlab.speedup.methods import ChannelsLast, LargeBatch, LayerFreeze, ProgressiveResizing, StopAtTarget


class Seen(nn.Module):
    """A tiny image backbone that records the input each forward receives."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def test_channels_last_puts_weights_and_batches_in_that_order_during_the_fit_only():
    model, method = Seen(), ChannelsLast()
    method.on_fit_start(None, model)
    model(torch.rand(2, 3, 8, 8))
    assert model.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.inputs[-1].is_contiguous(memory_format=torch.channels_last) and not model.inputs[-1].is_contiguous()
    method.on_fit_end(None, model)
    model(torch.rand(2, 3, 8, 8))
    assert model.inputs[-1].is_contiguous() and model.stem.weight.is_contiguous()


def test_progressive_resizing_trains_on_small_images_first_and_validates_on_full_ones():
    model, method = Seen(), ProgressiveResizing(start_scale=0.5, full_at=0.5)
    method.on_train_epoch_start(SimpleNamespace(current_epoch=0, max_epochs=4), model)
    model.train()(torch.rand(2, 3, 8, 8))
    assert model.inputs[-1].shape[2:] == (4, 4)
    model.eval()(torch.rand(2, 3, 8, 8))
    assert model.inputs[-1].shape[2:] == (8, 8)
    method.on_train_epoch_start(SimpleNamespace(current_epoch=2, max_epochs=4), model)
    model.train()(torch.rand(2, 3, 8, 8))
    assert model.inputs[-1].shape[2:] == (8, 8)

    fixed = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # takes 8x8 images only
    with pytest.raises(ConfigError, match="does not take \\(4, 4\\) images"):
        method.check(SimpleNamespace(input_shape=(1, 8, 8)), fixed)


def test_layer_freeze_freezes_the_early_layers_in_turn_and_they_get_no_gradients():
    model, method = Seen(), LayerFreeze(fraction=0.67, start=0.25, end=0.75)
    module = SimpleNamespace(backbone=model)
    method.on_train_epoch_start(SimpleNamespace(current_epoch=0, max_epochs=4), module)
    assert method.frozen == []
    method.on_train_epoch_start(SimpleNamespace(current_epoch=1, max_epochs=4), module)
    assert method.frozen == ["stem"] and not model.stem.training
    method.on_train_epoch_start(SimpleNamespace(current_epoch=3, max_epochs=4), module)
    assert method.frozen == ["stem", "body"]
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    assert model.stem.weight.grad is None and model.body.weight.grad is None
    assert model.head.weight.grad is not None
    with pytest.raises(ConfigError, match="fewer than two top-level layers"):
        method.check(None, nn.Sequential(nn.Linear(2, 2)))


def test_large_batch_scales_batch_and_rate_and_ramps_the_rate_without_a_warming_schedule():
    cfg = OmegaConf.create({"data": {"batch_size": 32}, "task": {"optimizer": {"lr": 0.01}, "scheduler": None}})
    method = LargeBatch(factor=4, warmup_fraction=0.5)
    method.configure(cfg)
    assert cfg.data.batch_size == 128 and cfg.task.optimizer.lr == pytest.approx(0.04)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.04)
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=8, optimizers=[optimizer])
    method.on_before_optimizer_step(trainer, None, optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # step 1 of a 4-step warm-up
    method.on_train_batch_end(trainer, None)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.04)  # the schedule's own rate, for its next step

    task = {"optimizer": {"lr": 1.0}, "scheduler": {"warmup_fraction": 0.05}}
    warming = OmegaConf.create({"data": {"batch_size": 8}, "task": task})
    LargeBatch(factor=2, warmup_fraction=0.2).configure(warming)
    assert warming.task.scheduler.warmup_fraction == pytest.approx(0.2)


def test_stop_at_target_stops_the_fit_when_the_metric_reaches_its_value():
    def trainer(**metrics):
        return SimpleNamespace(callback_metrics={k.replace("_", "/"): torch.tensor(v) for k, v in metrics.items()},
                               sanity_checking=False, should_stop=False, current_epoch=3)  # fmt: skip

    method = StopAtTarget("val/acc:0.9")
    below, reached = trainer(val_acc=0.85), trainer(val_acc=0.91)
    method.on_validation_end(below, None)
    method.on_validation_end(reached, None)
    assert not below.should_stop and reached.should_stop and method.stopped_epoch == 3
    loss = StopAtTarget("val/loss=0.2")  # a loss must fall to its target
    falling = trainer(val_loss=0.15)
    loss.on_validation_end(falling, None)
    assert falling.should_stop
    with pytest.raises(ConfigError, match="needs a target"):
        StopAtTarget(None)


def test_a_target_is_a_val_metric_and_a_value_and_time_to_target_reads_it():
    assert parse_target("val/acc:0.98") == ("val/acc", 0.98, False)
    assert parse_target("val/loss=0.1") == ("val/loss", 0.1, True)
    assert parse_target({"val/f1_macro": 0.5}) == ("val/f1_macro", 0.5, False)
    for bad in ("acc:0.9", "val/acc", "val/acc:high"):
        with pytest.raises(ConfigError, match="cost.target=.* is not <val metric>:<value>"):
            parse_target(bad)
    clock = RunClock("val/acc")
    clock.val_history = [(1.0, 0.5), (2.0, 0.8), (3.0, 0.955), (4.0, 0.96)]
    assert clock.time_to_target(0.99, "val/acc:0.8") == 2.0
    assert clock.time_to_target(0.99, "val/acc:0.99") is None
    assert clock.time_to_target(0.99) == 3.0  # 0.99 x the best, 0.9504
    assert clock.curve()[1] == [2.0, 0.8]


def test_feature_cache_trains_on_the_front_end_s_features_and_gives_the_waveforms_back():
    from trimlab.compression.distillation import WithTeacherLogits
    from trimlab.data.base import ArrayDataset
    from trimlab.models.speech import SpeechClassifier

    torch.manual_seed(0)
    model = SpeechClassifier((1, 4000), 3, sample_rate=8000, normalize=False, time_mask=4)
    clips = torch.randn(300, 1, 4000) * 0.1
    # A wrapped split, as distillation leaves it: the teacher logits stay.
    train = WithTeacherLogits(ArrayDataset(clips, torch.arange(300) % 3), torch.randn(300, 3))
    datamodule = SimpleNamespace(splits={"train": train}, shift_samples=160, gain_db=6.0)
    datamodule.augment_batch = lambda inputs: inputs  # what the class's waveform augmentation stands for
    trainer, method = SimpleNamespace(datamodule=datamodule), FeatureCache()
    method.on_train_start(trainer, SimpleNamespace(backbone=model))

    cached = datamodule.splits["train"]  # the same object, which the train loader holds: its inputs swapped
    features, target, logits = cached[5]
    assert cached is train and features.shape == model.spectrogram_shape and target == 2
    assert torch.equal(logits, train.logits[5]) and cached.dataset.inputs is cached.inputs
    model.eval()
    assert torch.equal(model(cached.inputs[:4]), model(clips[:4]))  # the same logits from features or waveforms
    assert model.training is False and method.facts()["shift_frames"] == 2  # 160 samples at an 80-sample hop
    batch = cached.inputs[:8]
    moved = datamodule.augment_batch(batch)
    assert moved.shape == batch.shape and not torch.equal(moved, batch)  # the gain and the shift act on features
    model.train()
    assert not torch.equal(model.frontend(batch), batch)  # SpecAugment's time mask still runs while training

    method.teardown(trainer, SimpleNamespace(backbone=model), "fit")
    assert train.inputs is clips and train.dataset.inputs is clips and datamodule.augment_batch(batch) is batch
    with pytest.raises(ConfigError, match="has no log-mel front end"):
        method.check(None, Seen())
    distilled = {"compression": {"distill": {"_target_": "trimlab.compression.distillation.Distill", "cache": False}}}
    with pytest.raises(ConfigError, match="would feed the teacher the student's cached features"):
        method.configure(OmegaConf.create(distilled))
    distilled["compression"]["distill"]["cache"] = True
    method.configure(OmegaConf.create(distilled))  # cached teacher logits come from the waveforms: allowed


def test_a_method_for_another_modality_or_strategy_fails_before_training(tmp_path):
    text = SimpleNamespace(modality="text")
    cfg = compose_train("speedup=[channels_last]", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="speedup=channels_last applies to vision data, not text"):
        speedup.check(speedup.build(cfg), cfg, text, Seen())
    ddp = compose_train("speedup=[layer_freeze]", "strategy=ddp", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="speedup=layer_freeze changes which weights train"):
        speedup.check(speedup.build(ddp), ddp, SimpleNamespace(modality="vision"), Seen())


def test_speedup_methods_through_the_cli_act_and_the_summary_says_what_they_did(tmp_path):
    run_dir = tmp_path / "run"
    picked = "speedup=[ema,channels_last,layer_freeze,large_batch,stop_at_target]"
    result = run_cli(picked, "cost.target=val/acc:0.5", "speedup.ema.decay=0.9", "trainer.max_epochs=6",
                     "++trainer.val_check_interval=0.5", "trainer.enable_progress_bar=false", "deploy=none",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    methods = {m["name"]: m for m in summary["speedup"]}
    assert list(methods) == ["ema", "channels_last", "layer_freeze", "large_batch", "stop_at_target"]
    assert methods["large_batch"]["batch_size"] == 4 * 32 and methods["stop_at_target"]["stopped_epoch"] is not None
    cost = summary["cost"]
    assert len(cost["val_curve"]) < 12  # stopped at its target, before the 12th validation
    assert cost["target"] == "val/acc >= 0.5" and cost["time_to_target_s"] > 0
    assert len(cost["val_curve"]) >= 2 and cost["val_curve"][0][0] < cost["val_curve"][-1][0]  # twice an epoch
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if k.startswith("backbone.")), "EMA did not act"

    bad = run_cli("speedup=[stop_at_target]", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert_clear_error(bad, "speedup=stop_at_target needs a target")


def test_compile_check_warns_with_the_measured_ratio_and_leaves_the_fit_as_it_was(caplog):
    import time

    from trimlab.speedup.compile_check import CompileCheck

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def slow(*args, **kwargs):  # stands in for a compiled call that is slower than eager
        time.sleep(0.005)
        return model._call_impl(*args, **kwargs)

    model._compiled_call_impl = slow
    check = CompileCheck(repeats=3)
    check.on_train_batch_end(SimpleNamespace(current_epoch=0), None, None, (torch.rand(4, 3, 8, 8), None), 0)
    running_mean, rng = model[1].running_mean.clone(), torch.random.get_rng_state()
    with caplog.at_level("WARNING", logger="trimlab.speedup.compile_check"):
        check.on_train_epoch_end(SimpleNamespace(current_epoch=0), SimpleNamespace(backbone=model))
    assert check.speedup is not None and check.speedup < 1.2
    assert "compiling does not pay" in caplog.text and f"({check.speedup:.2f}x)" in caplog.text
    assert torch.equal(model[1].running_mean, running_mean) and torch.equal(torch.random.get_rng_state(), rng)
    assert model._compiled_call_impl is slow and all(p.grad is None for p in model.parameters())
