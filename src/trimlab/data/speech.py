"""Speech DataModules: the Free Spoken Digit Dataset, Speech Commands v0.01, and any class-per-folder wav set.

Every clip becomes a fixed-length mono float waveform (N, 1, T) held in memory: read with soundfile (channels
averaged, values in [-1, 1]), resampled to `sample_rate` with a polyphase filter, then padded with zeros at the
end or centre-cropped to `clip_seconds`. Centre cropping keeps the middle of a long clip, where a trimmed
recording's word is; padding at the end keeps the onset where the recording put it. Training and prediction use
the same function (`load_clips`), so a served model sees exactly what it was trained on.

The features (log-mel) are computed by the model (`trimlab.models.speech`), not here: the checkpoint then holds
the whole path from waveform to class, and augmentation can act on the waveform (gain, time shift).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from trimlab.data.base import (
    ArrayDataset,
    ClassificationDataModule,
    check_fraction,
    class_folders,
    fingerprint,
    labelled_files,
    resolve_root,
    stratified_split,
    tensor_splits,
)
from trimlab.data.items import base64_file
from trimlab.data.transforms import random_gain, random_time_shift
from trimlab.errors import ConfigError, DataError

AUDIO_SUFFIXES = {".wav"}


def read_wav(path, sample_rate: int, name: str | None = None) -> np.ndarray:
    """A mono float32 waveform at `sample_rate` from a path (or a file object named `name`); an unreadable, empty
    or non-finite file is a `DataError`."""
    name = name or path
    try:
        wave, rate = sf.read(path if hasattr(path, "read") else str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        raise DataError(f"cannot read audio file {name} ({message}); remove or replace it (a PCM .wav)") from err
    if wave.shape[0] == 0:
        raise DataError(f"audio file {name} holds no samples (empty); remove or replace it")
    if not np.isfinite(wave).all():  # a float wav can hold NaN: every score of the clip would be NaN
        raise DataError(f"audio file {name} holds NaN or infinite samples; remove or replace it")
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    return resample(wave, int(rate), int(sample_rate))


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio target/rate (exact for 8 kHz ↔ 16 kHz and friends)."""
    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    divisor = math.gcd(rate, target)
    return resample_poly(wave, target // divisor, rate // divisor).astype(np.float32)


def fix_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Zeros appended to a short clip; a long clip keeps its centre `length` samples."""
    if len(wave) >= length:
        start = (len(wave) - length) // 2
        return wave[start : start + length]
    return np.pad(wave, (0, length - len(wave)))


def load_clips(paths: Sequence[Path], sample_rate: int, length: int) -> torch.Tensor:
    """Read, resample and pad/crop every file: (N, 1, length) float32."""
    batch = np.zeros((len(paths), 1, length), dtype=np.float32)
    for index, path in enumerate(paths):
        batch[index, 0] = fix_length(read_wav(path, sample_rate), length)
    return torch.from_numpy(batch)


def wav_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


class SpeechDataModule(ClassificationDataModule):
    """Fixed-length waveforms (N, 1, sample_rate × clip_seconds); gain and time-shift augmentation on the batch."""

    modality = "speech"

    def __init__(
        self,
        root: str | None = None,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        gain_db: float = 0.0,
        shift_ms: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.sample_rate = int(sample_rate)
        if self.sample_rate < 1000 or float(clip_seconds) <= 0:
            raise ConfigError(
                f"data.sample_rate={sample_rate} / data.clip_seconds={clip_seconds} cannot work; "
                "set data.sample_rate=<Hz, e.g. 16000> and data.clip_seconds=<seconds > 0>"
            )
        if float(gain_db) < 0 or float(shift_ms) < 0:
            raise ConfigError(f"data.gain_db={gain_db} and data.shift_ms={shift_ms} must be >= 0 (0 turns them off)")
        self.clip_seconds = float(clip_seconds)
        self.gain_db = float(gain_db)
        self.shift_samples = round(float(shift_ms) * self.sample_rate / 1000)
        self.input_shape = (1, round(self.sample_rate * self.clip_seconds))
        self.model_kwargs = {"sample_rate": self.sample_rate}

    @property
    def num_samples(self) -> int:
        return int(self.input_shape[-1])

    def signature(self) -> dict:
        """The sample rate: the same mel bins mean other frequencies at another rate."""
        return {"sample_rate": self.sample_rate}

    def augment_batch(self, inputs: torch.Tensor) -> torch.Tensor:
        return random_time_shift(random_gain(inputs, self.gain_db), self.shift_samples)

    def read(self, paths: Sequence[Path]) -> torch.Tensor:
        return load_clips(paths, self.sample_rate, self.num_samples)

    def splits_from_files(
        self, paths: list[Path], labels: np.ndarray, indices: list[np.ndarray], tag: str
    ) -> dict[str, ArrayDataset]:
        """Read every clip once; fingerprint the audio, the labels and the split (not the machine's paths)."""
        inputs = self.read(paths)
        self.data_fingerprint = fingerprint(
            inputs, labels, *indices, extra=f"{tag}:{self.sample_rate}:{self.num_samples}:{self.split_seed}"
        )
        return tensor_splits(inputs, labels, indices, ["train", "val", "test"])

    def predict_dataset(self, path: Path) -> tuple[list[str], ArrayDataset]:
        """A .wav file or a folder of them (recursive, sorted), preprocessed exactly as in training."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"inputs {path} does not exist; pass a .wav file or a folder of .wav files")
        files = wav_files(path) if path.is_dir() else [path]
        if not files:
            raise DataError(f"no .wav files under {path}; pass a .wav file or a folder of .wav files")
        return [str(p) for p in files], ArrayDataset(self.read(files), torch.full((len(files),), -1))

    @property
    def serve_spec(self) -> str:
        return f"a speech clip: a base64 WAV file (resampled to {self.sample_rate} Hz, {self.clip_seconds} s)"

    def serve_item(self, item) -> torch.Tensor:
        """A base64 WAV, read, resampled and padded/cropped as `predict_dataset` reads a file: (1, samples)."""
        wave = base64_file(item, "a WAV file", lambda f: read_wav(f, self.sample_rate, "the WAV"))
        return torch.from_numpy(fix_length(wave, self.num_samples))[None]


class FSDDDataModule(SpeechDataModule):
    """Free Spoken Digit Dataset: `<root>/fsdd/recordings/{digit}_{speaker}_{index}.wav`, 8 kHz.

    The official split: recordings with index 0–4 are the test set (300), 5–49 train (2,700); validation is a
    stratified `val_fraction` of train. Every speaker appears in both train and test."""

    NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")
    TEST_INDICES = range(5)

    def __init__(self, root: str | None = None, val_fraction: float = 0.1, **kwargs) -> None:
        kwargs.setdefault("sample_rate", 8000)
        super().__init__(root=root, **kwargs)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.class_names = [str(d) for d in range(10)]

    def recordings(self) -> list[Path]:
        folder = resolve_root(self.root, "fsdd", "fsdd/recordings/*.wav") / "fsdd" / "recordings"
        files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
        if not files:
            raise DataError(
                f"FSDD not found: no .wav files in {folder.absolute()}; set env TRIMLAB_DATA or data.root=<dir> "
                "to the dir that holds fsdd/recordings/"
            )
        return files

    def prepare_data(self) -> None:
        self.recordings()

    def load(self) -> dict[str, ArrayDataset]:
        files, labels, is_test = [], [], []
        for path in self.recordings():
            match = self.NAME.match(path.stem)
            if match is None:
                raise DataError(f"{path} is not named {{digit}}_{{speaker}}_{{index}}.wav; rename or remove it")
            files.append(path)
            labels.append(int(match.group(1)))
            is_test.append(int(match.group(3)) in self.TEST_INDICES)
        labels_arr, is_test_arr = np.array(labels, dtype=np.int64), np.array(is_test)
        pool = np.flatnonzero(~is_test_arr)
        if len(pool) < 10 or is_test_arr.sum() == 0:
            raise DataError(f"FSDD under {files[0].parent} has {len(pool)} train and {is_test_arr.sum()} test files")
        train, val = stratified_split(labels_arr[pool], [self.val_fraction], self.split_seed)
        indices = [pool[train], pool[val], np.flatnonzero(is_test_arr)]
        return self.splits_from_files(files, labels_arr, indices, "fsdd")


class SpeechCommandsDataModule(SpeechDataModule):
    """Speech Commands v0.01: `<root>/SpeechCommands/speech_commands_v0.01/<word>/*.wav`, 16 kHz, ≤ 1 s.

    The official split: files named in `validation_list.txt` / `testing_list.txt` (relative to the dataset dir)
    are val / test, every other clip is train. Class names are the word folders, sorted (`_`-folders skipped)."""

    def __init__(self, root: str | None = None, **kwargs) -> None:
        kwargs.setdefault("sample_rate", 16000)
        super().__init__(root=root, **kwargs)

    def dataset_dir(self) -> Path:
        base = resolve_root(self.root, "speech_commands", "SpeechCommands/speech_commands_v0.01/")
        base = base / "SpeechCommands" / "speech_commands_v0.01"
        folders = base.iterdir() if base.is_dir() else []
        words = sorted(p.name for p in folders if p.is_dir() and not p.name.startswith("_"))
        missing = [name for name in ("validation_list.txt", "testing_list.txt") if not (base / name).is_file()]
        if not words or missing:
            raise DataError(
                f"Speech Commands not found: looked in {base.absolute()} for word folders and "
                "validation_list.txt / testing_list.txt; set env TRIMLAB_DATA or data.root=<dir> to the dir that "
                "holds SpeechCommands/speech_commands_v0.01/"
            )
        self.class_names = words
        return base

    def prepare_data(self) -> None:
        self.dataset_dir()

    def load(self) -> dict[str, ArrayDataset]:
        base = self.dataset_dir()
        listed = {}
        for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
            for line in (base / name).read_text().splitlines():
                if line.strip():
                    listed[line.strip()] = split
        files, labels, splits = [], [], []
        for label, word in enumerate(self.class_names):
            for path in wav_files(base / word):
                files.append(path)
                labels.append(label)
                splits.append(listed.get(path.relative_to(base).as_posix(), "train"))
        splits_arr = np.array(splits)
        indices = [np.flatnonzero(splits_arr == name) for name in ("train", "val", "test")]
        if any(len(idx) == 0 for idx in indices):
            sizes = "/".join(str(len(idx)) for idx in indices)
            raise DataError(f"Speech Commands under {base} splits into {sizes} train/val/test clips; none may be empty")
        return self.splits_from_files(files, np.array(labels, dtype=np.int64), indices, "speech_commands")


class WavFolderDataModule(SpeechDataModule):
    """`<root>/<folder>/<class>/*.wav`: class names are the sub-folder names, sorted; a stratified seeded split."""

    def __init__(
        self,
        root: str | None = None,
        folder: str = "",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.folder = folder
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)

    def wav_dir(self) -> Path:
        base, self.class_names = class_folders(self.root, self.folder, "wav_folder", ".wav files")
        return base

    def prepare_data(self) -> None:
        self.wav_dir()

    def load(self) -> dict[str, ArrayDataset]:
        base = self.wav_dir()
        files = labelled_files(base, self.class_names, wav_files, ".wav files")
        labels = np.array([label for _, label in files], dtype=np.int64)
        try:
            indices = stratified_split(labels, [self.val_fraction, self.test_fraction], self.split_seed)
        except ValueError as err:  # scikit-learn: a class too small to appear in every split
            raise DataError(
                f"cannot split {len(files)} .wav files in {len(self.class_names)} classes under {base.absolute()} "
                f"into train/val/test ({err}); add files or change data.val_fraction / data.test_fraction"
            ) from err
        return self.splits_from_files([path for path, _ in files], labels, indices, "wav_folder")
