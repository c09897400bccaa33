"""Speech models: a log-mel front end (ours: torchaudio is not installed) in front of any 2D image backbone.

The front end lives inside the model, so a checkpoint maps waveform → class on its own, `trimlab-predict` feeds it
raw audio, and export or quantization later sees one module. Its filterbank follows the standard formulas
(torchaudio.functional.melscale_fbanks / librosa.filters.mel): HTK or Slaney mel scale, triangles on the rfft
bin frequencies, optional Slaney area normalisation.

SpecAugment (time and frequency masks) runs inside the front end while `self.training` only, so it is off at
val, test and predict without anyone having to remember it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from trimlab.errors import ConfigError

MEL_SCALES = ("htk", "slaney")
# Slaney's scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above, 27 mels per factor 6.4.
SLANEY_HZ_PER_MEL = 200.0 / 3
SLANEY_BREAK_HZ = 1000.0
SLANEY_BREAK_MEL = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL  # 15.0
SLANEY_LOGSTEP = math.log(6.4) / 27.0
LOG_FLOOR = 1e-6


def _check_scale(scale: str) -> None:
    if scale not in MEL_SCALES:
        raise ConfigError(f"mel_scale={scale!r} is not one of {', '.join(MEL_SCALES)}; set model.mel_scale=htk")


def hz_to_mel(freq: float | torch.Tensor, scale: str = "htk") -> float | torch.Tensor:
    """Hz → mel. HTK: 2595·log10(1 + f/700). Slaney: f/(200/3) below 1 kHz, 15 + ln(f/1000)/(ln 6.4/27) above."""
    _check_scale(scale)
    f = torch.as_tensor(freq, dtype=torch.float64)
    if scale == "htk":
        mel = 2595.0 * torch.log10(1.0 + f / 700.0)
    else:
        log_part = SLANEY_BREAK_MEL + torch.log(torch.clamp(f, min=SLANEY_BREAK_HZ) / SLANEY_BREAK_HZ) / SLANEY_LOGSTEP
        mel = torch.where(f >= SLANEY_BREAK_HZ, log_part, f / SLANEY_HZ_PER_MEL)
    return mel if isinstance(freq, torch.Tensor) else float(mel)


def mel_to_hz(mel: float | torch.Tensor, scale: str = "htk") -> float | torch.Tensor:
    """The inverse of `hz_to_mel`."""
    _check_scale(scale)
    m = torch.as_tensor(mel, dtype=torch.float64)
    if scale == "htk":
        freq = 700.0 * (torch.pow(10.0, m / 2595.0) - 1.0)
    else:
        log_part = SLANEY_BREAK_HZ * torch.exp(SLANEY_LOGSTEP * (m - SLANEY_BREAK_MEL))
        freq = torch.where(m >= SLANEY_BREAK_MEL, log_part, m * SLANEY_HZ_PER_MEL)
    return freq if isinstance(mel, torch.Tensor) else float(freq)


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: str = "htk",
    norm: str | None = None,
) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters, as torchaudio's melscale_fbanks builds them.

    Centres are equally spaced on the mel scale between f_min and f_max; filter i rises from centre i-1 to
    centre i and falls to centre i+1, evaluated at the rfft bin frequencies linspace(0, sr/2, n_freqs).
    norm="slaney" scales each filter by 2/(f_hi - f_lo) so every triangle has unit area in Hz."""
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ConfigError(
            f"mel range f_min={f_min}..f_max={f_max} Hz must lie in [0, {sample_rate / 2}] (half the sample rate)"
        )
    if norm not in (None, "slaney"):
        raise ConfigError(f"mel_norm={norm!r} must be null or slaney")
    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(float(f_min), scale), hz_to_mel(f_max, scale), n_mels + 2, dtype=torch.float64)
    points = mel_to_hz(mels, scale)
    widths = points[1:] - points[:-1]
    slopes = points[None, :] - bins[:, None]  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    bank = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        bank = bank * (2.0 / (points[2:] - points[:-2]))[None, :]
    return bank.float()


def mask_along(features: torch.Tensor, dim: int, max_width: int, count: int) -> torch.Tensor:
    """Boolean mask (N, 1, F, T) with `count` random bands of width 0..max_width per item along `dim` (-2 or -1).

    Widths and starts are tensors drawn from the global RNG: no data-dependent Python control flow."""
    n, size = features.shape[0], features.shape[dim]
    positions = torch.arange(size, device=features.device)
    mask = torch.zeros(n, size, dtype=torch.bool, device=features.device)
    for _ in range(count):
        width = torch.floor(torch.rand(n, 1, device=features.device) * (max_width + 1)).clamp(max=size)
        start = torch.floor(torch.rand(n, 1, device=features.device) * (size - width + 1))
        mask = mask | ((positions >= start) & (positions < start + width))
    return mask[:, None, :, None] if dim == -2 else mask[:, None, None, :]


class LogMel(nn.Module):
    """Waveform (N, 1, T) → log-mel (N, 1, n_mels, frames), with SpecAugment while training.

    Power spectrogram of a centred, reflect-padded STFT (hann window), projected on the mel filterbank,
    then ln(mel + 1e-6): the floor keeps digital silence finite (about -13.8). With `normalize`, each utterance's
    features are shifted and scaled to zero mean and unit variance, which makes the model blind to the recording
    level (and the gain augmentation a no-op, apart from the floor). Masked cells take the utterance's mean."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        win_length: int,
        hop_length: int,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: str = "htk",
        mel_norm: str | None = None,
        normalize: bool = True,
        freq_mask: int = 0,
        time_mask: int = 0,
        num_masks: int = 1,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ConfigError(f"the window ({win_length} samples) is longer than model.n_fft={n_fft}; raise n_fft")
        if min(hop_length, n_mels, win_length) < 1 or min(freq_mask, time_mask, num_masks) < 0:
            raise ConfigError("model.hop_ms, win_ms and n_mels must be > 0; mask widths and num_masks >= 0")
        self.n_fft, self.win_length, self.hop_length = int(n_fft), int(win_length), int(hop_length)
        self.normalize = bool(normalize)
        self.freq_mask, self.time_mask, self.num_masks = int(freq_mask), int(time_mask), int(num_masks)
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        bank = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max, mel_scale, mel_norm)
        self.register_buffer("mel_basis", bank.T.contiguous(), persistent=False)  # (n_mels, n_freqs)

    def frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1  # centred STFT

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 4:  # log-mel features computed earlier (speedup=feature_cache): SpecAugment is left
            return self.augmented(waveform.float())
        # Always float32, whatever the run's precision: bf16 weights would not match the float power spectrum,
        # and in fp16 a loud clip's mel energies overflow (65,504 max).
        with torch.autocast(waveform.device.type, enabled=False):
            return self.features(waveform.reshape(waveform.shape[0], -1).float())  # mono (N, 1, T) → (N, T)

    def features(self, signal: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            signal,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = torch.view_as_real(spec).pow(2).sum(-1)  # (N, n_freqs, frames)
        features = torch.log(torch.matmul(self.mel_basis.float(), power) + LOG_FLOOR)[:, None]  # (N, 1, n_mels, frames)
        if self.normalize:
            mean = features.mean(dim=(-2, -1), keepdim=True)
            std = features.std(dim=(-2, -1), keepdim=True)
            features = (features - mean) / (std + 1e-5)
        return self.augmented(features)

    def augmented(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and self.num_masks > 0 and (self.freq_mask > 0 or self.time_mask > 0):
            return self.spec_augment(features)
        return features

    def spec_augment(self, features: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(features, dtype=torch.bool)
        if self.freq_mask > 0:
            mask = mask | mask_along(features, -2, self.freq_mask, self.num_masks)
        if self.time_mask > 0:
            mask = mask | mask_along(features, -1, self.time_mask, self.num_masks)
        return torch.where(mask, features.mean(dim=(-2, -1), keepdim=True), features)


def default_body(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    from trimlab.models.vision import SmallCNN

    return SmallCNN(input_shape, num_classes)


class SpeechClassifier(nn.Module):
    """`LogMel` front end, then an image backbone on the (1, n_mels, frames) spectrogram.

    `body` is a callable taking (input_shape, num_classes), in YAML a Hydra partial such as
    `{_target_: trimlab.models.vision.SmallCNN, _partial_: true, widths: [...]}`; its classifier stays under
    `body.head`, so transfer learning finds it like any other backbone's head. Window and hop are given in ms
    and converted at the data's `sample_rate`; `n_fft` defaults to the next power of two >= the window."""

    modality = "speech"  # the data it fits (see the model contract in trimlab.models)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        sample_rate: int,
        n_mels: int = 40,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: str = "htk",
        mel_norm: str | None = None,
        normalize: bool = True,
        freq_mask: int = 0,
        time_mask: int = 0,
        num_masks: int = 1,
        body: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 2 or input_shape[0] != 1:
            raise ConfigError(f"a speech model takes mono waveforms shaped (1, samples), not {tuple(input_shape)}")
        win_length = round(sample_rate * win_ms / 1000)
        hop_length = round(sample_rate * hop_ms / 1000)
        n_fft = int(n_fft) if n_fft else 2 ** math.ceil(math.log2(max(win_length, 2)))
        self.frontend = LogMel(
            sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max, mel_scale, mel_norm, normalize,
            freq_mask, time_mask, num_masks,
        )  # fmt: skip
        self.spectrogram_shape = (1, int(n_mels), self.frontend.frames(int(input_shape[1])))
        self.body = (body or default_body)(input_shape=self.spectrogram_shape, num_classes=num_classes)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.frontend(waveform)  # float32; the body runs in the run's precision
        return self.body(features.to(next(self.body.parameters()).dtype))
