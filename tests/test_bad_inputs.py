"""Inputs to trimlab-predict that used to give an answer, a wrong one, or a traceback: each is one clear error.

The checks live in the DataModules' `predict_dataset` and at the top of `predict()`, so most cases call those
in-process; one CLI run shows the line and exit code a user sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import assert_clear_error, run_cli
from trimlab.data.speech import WavFolderDataModule
from trimlab.data.vision import DigitsDataModule, ImageFolderDataModule
from trimlab.errors import DataError, TrimlabError
from trimlab.predict import predict

DIGITS_SHAPES = "(N, 8, 8), (N, 8, 8, 1), (N, 1, 8, 8) or flat rows (N, 64)"


def saved(tmp_path: Path, array: np.ndarray) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, array)
    return path


def test_flat_digit_rows_give_one_prediction_each(tmp_path):
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8)).astype(np.float32)
    datamodule = DigitsDataModule()
    names, flat = datamodule.predict_dataset(saved(tmp_path, images.reshape(4, 64)))
    assert names == [f"x.npy[{i}]" for i in range(4)] and flat.inputs.shape == (4, 1, 8, 8)
    _, square = datamodule.predict_dataset(saved(tmp_path, images))
    assert torch.equal(flat.inputs, square.inputs)  # row i is image i, pixel for pixel


@pytest.mark.parametrize("shape", [(4, 65), (4, 8, 9), (8, 8, 3), (4, 4, 8, 8), (4, 16, 16)])
def test_an_array_of_another_shape_is_refused_with_the_expected_one(tmp_path, shape):
    with pytest.raises(DataError) as err:
        DigitsDataModule().predict_dataset(saved(tmp_path, np.zeros(shape, np.float32)))
    assert f"holds an array shaped {shape}" in str(err.value)
    assert f"this run's model takes 8x8 images with 1 channel(s): pass an array shaped {DIGITS_SHAPES}" in str(
        err.value
    )


def test_flat_rows_are_refused_when_the_channel_order_is_a_guess(tmp_path):
    rgb = ImageFolderDataModule(folder="unused", image_size=8, channels=3)
    assert len(rgb.predict_dataset(saved(tmp_path, np.zeros((4, 8, 8, 3), np.float32)))[0]) == 4
    with pytest.raises(DataError, match=r"not flat rows: their channel order is unknown"):
        rgb.predict_dataset(saved(tmp_path, np.zeros((4, 192), np.float32)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_an_array_is_refused(tmp_path, bad):
    images = np.full((5, 8, 8), 0.5, np.float32)
    images[2, 3, 4] = bad
    with pytest.raises(DataError) as err:
        DigitsDataModule().predict_dataset(saved(tmp_path, images))
    assert "x.npy[2] holds NaN or infinite values (1 of 5 images" in str(err.value)


def test_a_wav_with_nan_samples_is_refused(tmp_path):
    wave = np.full(800, 0.1, np.float32)
    wave[100] = np.nan
    sf.write(tmp_path / "nan.wav", wave, 8000, subtype="FLOAT")
    datamodule = WavFolderDataModule(folder="unused", sample_rate=8000, clip_seconds=0.1)
    with pytest.raises(DataError) as err:
        datamodule.predict_dataset(tmp_path / "nan.wav")
    assert f"audio file {tmp_path / 'nan.wav'} holds NaN or infinite samples" in str(err.value)


def test_an_unwritable_output_fails_before_the_run_is_read(tmp_path):
    run_dir = tmp_path / "not_a_run"  # reading it would fail otherwise: the output is checked first
    inputs = saved(tmp_path, np.zeros((1, 8, 8), np.float32))
    with pytest.raises(TrimlabError, match="cannot write output /proc/x.csv: /proc is not a writable directory"):
        predict(run_dir, inputs, Path("/proc/x.csv"))
    with pytest.raises(TrimlabError, match=f"output {tmp_path} is a directory; pass a file path"):
        predict(run_dir, inputs, tmp_path)


@pytest.mark.slow
def test_cli_predict_to_an_unwritable_output(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")  # enough for the command line checks, no model
    inputs = saved(tmp_path, np.zeros((1, 8, 8), np.float32))
    result = run_cli(f"run_dir={run_dir}", f"inputs={inputs}", "output=/proc/x.csv", cwd=tmp_path,
                     script="trimlab-predict")  # fmt: skip
    assert_clear_error(result, "cannot write output /proc/x.csv")
