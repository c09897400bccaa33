"""`speedup=feature_cache`: a speech model's log-mel features of every training clip computed once, not every epoch.

The front end (STFT, mel filterbank, log, normalisation) then runs once per clip instead of once per clip and
epoch; how much of a step that saves depends on the model (on the FSDD CNN, 5-8 % of the train time:
experiments/training). The clips' waveform augmentations move to the cached features, where they cost almost
nothing:

- the time shift becomes a shift by whole frames (`data.shift_ms` / hop), the gap filled with the utterance's
  lowest value (the silence a zero-filled shift leaves);
- the gain becomes an offset of the log energies (`ln 10 / 10` per dB of power), and none at all when the front
  end normalises each utterance, as the waveform gain then is too;
- SpecAugment's masks still run in the front end, on the cached features, while training.

Validation, test, export and serving take waveforms through the whole front end, as without the cache.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from trimlab.data.transforms import random_time_shift
from trimlab.errors import ConfigError

CHUNK = 256  # clips per front-end pass while caching: bounded memory for the STFT of a large split


def frontend_of(backbone: nn.Module) -> nn.Module | None:
    from trimlab.models.speech import LogMel

    frontend = getattr(backbone, "frontend", None)
    return frontend if isinstance(frontend, LogMel) else None


def set_inputs(dataset: Any, inputs: torch.Tensor) -> None:
    """The train split's inputs swapped in place (and those of the split a wrapper, such as the teacher logits,
    holds): the train loader, already built, reads the same dataset object; targets and the rest stay."""
    if hasattr(dataset, "dataset"):
        set_inputs(dataset.dataset, inputs)
    dataset.inputs = inputs


class FeatureCache(pl.Callback):
    """Caches the train split's un-augmented log-mel features as each fit's training starts (inside its train
    time: the cache is part of what the fit costs) and puts the waveforms back when the fit is torn down; while it
    lasts, the DataModule's augmentation acts on features."""

    def __init__(self) -> None:
        self.shift_frames, self.gain_db, self.shape = 0, 0.0, None

    def configure(self, cfg: Any) -> None:
        """Before anything is built: a teacher that runs during the fit (distill with cache=false) would be fed
        the student's cached features instead of waveforms."""
        from omegaconf import OmegaConf

        distill = OmegaConf.select(cfg, "compression.distill", default=None)
        if OmegaConf.is_dict(distill) and "_target_" in distill and distill.get("cache", True) is False:
            raise ConfigError("speedup=feature_cache with compression.distill.cache=false would feed the teacher the "
                              "student's cached features; use compression.distill.cache=true (the teacher's logits "
                              "are then computed once, from the waveforms)")  # fmt: skip

    def check(self, datamodule: Any, backbone: nn.Module) -> None:
        if frontend_of(backbone) is None:
            raise ConfigError(f"speedup=feature_cache: {type(backbone).__name__} has no log-mel front end "
                              "(model.frontend) to cache; use model=speech_cnn or remove it")  # fmt: skip

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule, frontend = trainer.datamodule, frontend_of(pl_module.backbone)
        self.train = datamodule.splits["train"]
        self.waveforms = waveforms = self.train.inputs
        mode = frontend.training
        frontend.eval()  # no SpecAugment in the cache: it draws new masks every step
        with torch.no_grad():
            device = next((b.device for b in frontend.buffers()), torch.device("cpu"))
            features = torch.cat([frontend(waveforms[i : i + CHUNK].to(device)).cpu()
                                  for i in range(0, len(waveforms), CHUNK)])  # fmt: skip
        frontend.train(mode)
        set_inputs(self.train, features)
        self.shape = list(features.shape[1:])
        self.shift_frames = round(getattr(datamodule, "shift_samples", 0) / frontend.hop_length)
        self.gain_db = 0.0 if frontend.normalize else float(getattr(datamodule, "gain_db", 0.0))
        self.instance_augment = vars(datamodule).get("augment_batch")  # usually none: the class's method
        datamodule.augment_batch = self.augment_features  # this DataModule only, until the fit ends

    def augment_features(self, features: torch.Tensor) -> torch.Tensor:
        n, _, mels, frames = features.shape
        if self.gain_db > 0:
            db = (torch.rand(n, device=features.device) * 2 - 1) * self.gain_db
            features = features + (db * math.log(10) / 10).view(n, 1, 1, 1).to(features.dtype)
        if self.shift_frames > 0:
            low = features.amin(dim=(1, 2, 3), keepdim=True)  # zero after subtracting: the shift's fill
            shifted = random_time_shift((features - low).view(n, mels, frames), self.shift_frames)
            features = shifted.view(n, 1, mels, frames) + low
        return features

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage == "fit" and hasattr(self, "waveforms"):
            set_inputs(self.train, self.waveforms)
            del datamodule.augment_batch, self.waveforms, self.train  # the waveform augmentation again
            if self.instance_augment is not None:
                datamodule.augment_batch = self.instance_augment

    def facts(self) -> dict[str, Any]:
        return {"feature_shape": self.shape, "shift_frames": self.shift_frames, "gain_db": self.gain_db}
