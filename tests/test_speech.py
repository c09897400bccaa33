"""Speech: mel scales and filterbanks against the standard formulas, the log-mel front end and SpecAugment,
wav reading/resampling/padding, the FSDD / Speech Commands / wav-folder splits, augmentation, errors, and a tiny
end-to-end run (train → eval → predict) on synthetic tones."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import FAST, SHARED_DATA, assert_clear_error, run_cli
from trimlab.data.base import ArrayDataset
from trimlab.data.speech import (
    FSDDDataModule,
    SpeechCommandsDataModule,
    WavFolderDataModule,
    fix_length,
    load_clips,
    random_gain,
    random_time_shift,
    read_wav,
)
from trimlab.errors import ConfigError, DataError
from trimlab.models.speech import LogMel, SpeechClassifier, hz_to_mel, mel_filterbank, mel_to_hz

RATE = 8000
TONES = {"high": 2000.0, "low": 300.0, "mid": 800.0}


def tone(freq: float, seconds: float = 0.25, rate: int = RATE, phase: float = 0.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


@pytest.fixture
def tiny_wavs(tmp_path: Path) -> Path:
    """<tmp>/wavs/<class>/<i>.wav: 10 tones per class (300/800/2000 Hz), 8 kHz, 0.25 s, random phase and level."""
    root = tmp_path / "wavs"
    rng = np.random.default_rng(0)
    for name, freq in TONES.items():
        (root / name).mkdir(parents=True)
        for index in range(10):
            wave = tone(freq, phase=rng.uniform(0, 6), amp=rng.uniform(0.2, 0.8)) + rng.normal(0, 0.01, 2000)
            sf.write(root / name / f"{index}.wav", wave.astype(np.float32), RATE)
    return root


def test_mel_scales_known_values():
    assert hz_to_mel(1000.0, "htk") == pytest.approx(999.985, abs=1e-3)
    assert hz_to_mel(0.0, "htk") == 0.0
    assert hz_to_mel(1000.0, "slaney") == pytest.approx(15.0, abs=1e-12)
    assert hz_to_mel(500.0, "slaney") == pytest.approx(7.5, abs=1e-12)
    assert hz_to_mel(2000.0, "slaney") == pytest.approx(15 + math.log(2) / (math.log(6.4) / 27), abs=1e-12)
    freqs = torch.tensor([0.0, 60.0, 440.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0], dtype=torch.float64)
    for scale in ("htk", "slaney"):
        assert torch.allclose(mel_to_hz(hz_to_mel(freqs, scale), scale), freqs, atol=1e-9)
        assert torch.all(torch.diff(hz_to_mel(freqs, scale)) > 0)
    with pytest.raises(ConfigError, match="mel_scale"):
        hz_to_mel(1.0, "bark")
    with pytest.raises(ConfigError, match="half the sample rate"):
        mel_filterbank(129, 40, 8000, f_max=6000)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_filterbank_is_the_standard_triangles(scale):
    rate, n_fft, n_mels = 16000, 512, 40
    bank = mel_filterbank(n_fft // 2 + 1, n_mels, rate, scale=scale)
    assert bank.shape == (n_fft // 2 + 1, n_mels) and bank.min() >= 0
    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    points = mel_to_hz(torch.linspace(0.0, hz_to_mel(rate / 2, scale), n_mels + 2, dtype=torch.float64), scale)
    points = points.numpy()
    for i in range(n_mels):
        # An independent construction (librosa's): 0 at the neighbours' centres, 1 at this filter's centre.
        expected = np.interp(bins, points[i : i + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
        assert np.allclose(bank[:, i].numpy(), expected, atol=1e-6)
        peak, centre = int(bank[:, i].argmax()), points[i + 1] / (rate / n_fft)
        assert math.floor(centre) <= peak <= math.ceil(centre) and bank[peak, i] > 0
    normed = mel_filterbank(n_fft // 2 + 1, n_mels, rate, scale=scale, norm="slaney")
    assert torch.allclose(normed, bank * torch.from_numpy(2.0 / (points[2:] - points[:-2])).float()[None])
    fine = mel_filterbank(8193, n_mels, rate, scale=scale, norm="slaney")  # bins 0.98 Hz apart
    area = fine.sum(0) * (rate / 2 / 8192)
    assert torch.allclose(area, torch.ones(n_mels), atol=0.01)  # every triangle has unit area in Hz


def test_logmel_shape_and_spec_augment_only_in_train_mode():
    waves = torch.from_numpy(np.stack([tone(f, seconds=1.0) for f in (300, 800, 2000, 500)] * 2))[:, None]
    front = LogMel(RATE, n_fft=256, win_length=200, hop_length=80, n_mels=40, freq_mask=8, time_mask=20, num_masks=2)
    plain = LogMel(RATE, n_fft=256, win_length=200, hop_length=80, n_mels=40)
    front.eval()
    features = front(waves)
    assert features.shape == (8, 1, 40, 101) and front.frames(8000) == 101
    assert torch.isfinite(features).all()
    assert torch.equal(features, plain(waves)) and torch.equal(features, front(waves))
    front.train()
    torch.manual_seed(0)
    masked = front(waves)
    assert not torch.equal(masked, features)
    changed = masked != features
    assert changed.any(-1).any(-1).all() or changed.any(-2).any(-2).all()  # whole bands, not scattered cells
    plain.train()  # mask widths 0: nothing changes even while training
    assert torch.equal(plain(waves), features)


def test_speech_classifier_exports_and_shapes():
    model = SpeechClassifier((1, 8000), 10, sample_rate=RATE, freq_mask=4, time_mask=8)
    assert model.spectrogram_shape == (1, 40, 101)
    assert any(key.startswith("body.head.") for key in model.state_dict())
    model.eval()
    waves = torch.from_numpy(np.stack([tone(440, seconds=1.0), tone(900, seconds=1.0)]))[:, None]
    exported = torch.export.export(model, (waves,))
    assert torch.allclose(exported.module()(waves), model(waves), atol=1e-5)


def test_configs_compose_and_speech_resnet_runs():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from trimlab.launch import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for experiment, target in (("fsdd_cnn", "FSDD"), ("speech_commands_cnn", "SpeechCommands")):
            cfg = compose("train", overrides=[f"experiment={experiment}"])
            assert cfg.data._target_.endswith(f"{target}DataModule") and cfg.task_name == experiment
        cfg = compose("train", overrides=["model=speech_resnet"])
    node = dict(cfg.model)
    node.pop("compile"), node.pop("pretrained")  # trimlab's keys, popped by the pipeline
    model = instantiate(node, input_shape=[1, 16000], num_classes=5, sample_rate=16000)
    assert type(model.body).__name__ == "ResNet" and model.body.head[2].p == cfg.model.body.dropout
    assert model(torch.zeros(2, 1, 16000)).shape == (2, 5)


def test_read_wav_resamples_and_keeps_pitch(tmp_path):
    path = tmp_path / "a440.wav"
    sf.write(path, tone(440, seconds=0.5), RATE)
    wave = read_wav(path, 16000)
    assert wave.dtype == np.float32 and len(wave) == 8000
    assert np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave) == pytest.approx(440, abs=2)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([np.full(100, 0.5), np.full(100, -0.25)], 1).astype(np.float32), RATE, subtype="FLOAT")
    assert np.allclose(read_wav(stereo, RATE), 0.125)  # channels averaged


def test_fix_length_pads_at_the_end_and_crops_the_centre():
    wave = np.arange(1, 7, dtype=np.float32)
    assert fix_length(wave, 8).tolist() == [1, 2, 3, 4, 5, 6, 0, 0]
    assert fix_length(wave, 4).tolist() == [2, 3, 4, 5]
    assert fix_length(wave, 6).tolist() == wave.tolist()


def test_empty_and_corrupt_wavs_are_named(tmp_path):
    empty, garbage = tmp_path / "empty.wav", tmp_path / "garbage.wav"
    sf.write(empty, np.zeros(0, np.float32), RATE)
    garbage.write_bytes(b"RIFF\x00\x01garbage, not audio" * 10)
    with pytest.raises(DataError, match="empty.wav.*no samples"):
        read_wav(empty, RATE)
    with pytest.raises(DataError, match="cannot read audio file .*garbage.wav"):
        read_wav(garbage, RATE)


def write_coded(path: Path, code: int, samples: int = 800) -> None:
    """A constant clip whose value names it (exact: 32-bit float wav), so a test can see which split it landed in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(samples, code / 1000, np.float32), RATE, subtype="FLOAT")


def codes(dataset: ArrayDataset) -> set[int]:
    return {round(float(v) * 1000) for v in dataset.inputs[:, 0, 0]}


def test_fsdd_official_split_by_recording_index(tmp_path):
    recordings = tmp_path / "fsdd" / "recordings"
    for digit in range(10):
        for speaker_no, speaker in enumerate(["ann", "bob"]):
            for index in range(10):
                write_coded(recordings / f"{digit}_{speaker}_{index}.wav", digit * 100 + speaker_no * 10 + index)
    datamodule = FSDDDataModule(root=str(tmp_path), val_fraction=0.1, clip_seconds=0.1)
    datamodule.prepare_data()
    datamodule.setup()
    assert datamodule.class_names == [str(d) for d in range(10)] and datamodule.input_shape == (1, 800)
    assert datamodule.model_kwargs == {"sample_rate": 8000}
    assert {k: len(v) for k, v in datamodule.splits.items()} == {"train": 90, "val": 10, "test": 100}
    assert all(code % 10 < 5 for code in codes(datamodule.splits["test"]))
    assert all(code % 10 >= 5 for split in ("train", "val") for code in codes(datamodule.splits[split]))
    assert sorted(datamodule.splits["val"].targets.tolist()) == list(range(10))  # stratified
    assert datamodule.splits["test"].targets.tolist() == sorted(datamodule.splits["test"].targets.tolist())


def test_fsdd_missing_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="TRIMLAB_DATA") as err:
        FSDDDataModule(root=str(tmp_path)).prepare_data()
    assert str(tmp_path / "fsdd" / "recordings") in str(err.value)
    with pytest.raises(DataError, match="none is set"):
        FSDDDataModule(root=None).prepare_data()


def test_speech_commands_split_follows_the_lists(tmp_path):
    base = tmp_path / "SpeechCommands" / "speech_commands_v0.01"
    for word_no, word in enumerate(["go", "no", "yes"]):
        for n in range(4):
            write_coded(base / word / f"s{n}_nohash_0.wav", word_no * 10 + n)
    write_coded(base / "_background_noise_" / "noise.wav", 999)
    (base / "validation_list.txt").write_text("go/s0_nohash_0.wav\nyes/s1_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("no/s2_nohash_0.wav\nyes/s3_nohash_0.wav\ngone/missing.wav\n")
    datamodule = SpeechCommandsDataModule(root=str(tmp_path), sample_rate=RATE, clip_seconds=0.1)
    datamodule.setup()
    assert datamodule.class_names == ["go", "no", "yes"]
    assert codes(datamodule.splits["val"]) == {0, 21} and codes(datamodule.splits["test"]) == {12, 23}
    assert codes(datamodule.splits["train"]) == {1, 2, 3, 10, 11, 13, 20, 22}
    (base / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt"):
        SpeechCommandsDataModule(root=str(tmp_path)).prepare_data()


@pytest.mark.skipif(not (SHARED_DATA / "SpeechCommands").is_dir(), reason="Speech Commands not found (TRIMLAB_DATA)")
def test_real_speech_commands_subset_split():
    datamodule = SpeechCommandsDataModule(root=str(SHARED_DATA))
    datamodule.setup()
    assert datamodule.num_classes == 30 and datamodule.input_shape == (1, 16000)
    assert {k: len(v) for k, v in datamodule.splits.items()} == {"train": 205, "val": 44, "test": 51}


@pytest.mark.skipif(not (SHARED_DATA / "fsdd" / "recordings").is_dir(), reason="FSDD not found (TRIMLAB_DATA)")
def test_real_fsdd_files_read_as_8khz_mono():
    files = sorted((SHARED_DATA / "fsdd" / "recordings").glob("7_jackson_*.wav"))[:5]
    clips = load_clips(files, 8000, 8000)
    assert clips.shape == (5, 1, 8000) and clips.abs().max() <= 1.0 and clips.abs().amax(-1).min() > 0.01


def test_wav_folder_and_predict_inputs(tiny_wavs):
    datamodule = WavFolderDataModule(root=str(tiny_wavs.parent), folder="wavs", sample_rate=16000, clip_seconds=0.5)
    datamodule.setup()
    assert datamodule.class_names == ["high", "low", "mid"] and datamodule.input_shape == (1, 8000)
    assert {k: len(v) for k, v in datamodule.splits.items()} == {"train": 21, "val": 3, "test": 6}
    names, dataset = datamodule.predict_dataset(tiny_wavs)
    assert len(names) == 30 and names == sorted(names) and dataset.targets.eq(-1).all()
    one_name, one = datamodule.predict_dataset(tiny_wavs / "low" / "3.wav")
    assert one_name == [str(tiny_wavs / "low" / "3.wav")] and torch.equal(one.inputs[0], dataset.inputs[13])
    with pytest.raises(DataError, match="does not exist"):
        datamodule.predict_dataset(tiny_wavs / "nope")
    (tiny_wavs / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no .wav files"):
        datamodule.predict_dataset(tiny_wavs / "empty_dir")


def test_augmentation_changes_train_batches_only(tiny_wavs):
    datamodule = WavFolderDataModule(folder=str(tiny_wavs), sample_rate=RATE, augment=True, gain_db=6, shift_ms=20)
    datamodule.setup()
    before = datamodule.splits["val"].inputs.clone()
    batch = next(iter(datamodule.train_dataloader()))

    class FakeTrainer:
        training = False

    datamodule.trainer = FakeTrainer()
    assert datamodule.on_after_batch_transfer(batch, 0)[0] is batch[0]  # val / test / predict: untouched
    FakeTrainer.training = True
    assert not torch.equal(datamodule.on_after_batch_transfer(batch, 0)[0], batch[0])
    assert torch.equal(datamodule.splits["val"].inputs, before)
    names, predict = datamodule.predict_dataset(tiny_wavs)
    assert torch.equal(predict.inputs, load_clips([Path(n) for n in names], RATE, 8000))


def test_gain_and_shift_are_what_they_say():
    waves = torch.arange(1, 11, dtype=torch.float32).repeat(64, 1, 1)  # (64, 1, 10)
    torch.manual_seed(0)
    ratio = random_gain(waves, 6.0) / waves
    assert torch.allclose(ratio, ratio[:, :, :1].expand_as(ratio))  # one gain per clip
    assert ratio.min() >= 10 ** (-6 / 20) - 1e-6 and ratio.max() <= 10 ** (6 / 20) + 1e-6
    shifted = random_time_shift(waves, 3)
    padded = torch.nn.functional.pad(waves[0], (3, 3))
    offsets = [next(o for o in range(7) if torch.equal(padded[:, o : o + 10], s)) for s in shifted]
    assert len(set(offsets)) > 3  # many different shifts, each zero-filled, none wrapped around
    assert torch.equal(random_gain(waves, 0), waves) and torch.equal(random_time_shift(waves, 0), waves)


def cli_summaries(cwd: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (cwd / "outputs").rglob("summary.json")]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty", "corrupt"])
def test_cli_bad_wav_is_one_clear_line(tiny_wavs, tmp_path, kind):
    bad = tiny_wavs / "mid" / f"{kind}.wav"
    if kind == "empty":
        sf.write(bad, np.zeros(0, np.float32), RATE)
    else:
        bad.write_bytes(b"\x00garbage bytes, not a RIFF header" * 20)
    result = run_cli("data=wav_folder", f"data.folder={tiny_wavs}", "model=speech_cnn", *FAST, cwd=tmp_path)
    assert_clear_error(result, str(bad), "remove or replace it")
    summaries = cli_summaries(tmp_path)
    assert len(summaries) == 1 and summaries[0]["status"] == "failed" and str(bad) in summaries[0]["error"]
    assert not list((tmp_path / "outputs").rglob("*.ckpt")) and not list((tmp_path / "outputs").rglob(".*.tmp"))


@pytest.mark.slow
def test_end_to_end_train_eval_predict(tiny_wavs, tmp_path):
    result = run_cli(
        "data=wav_folder",
        f"data.folder={tiny_wavs}",
        "data.sample_rate=8000",
        "data.clip_seconds=0.25",
        "model=speech_cnn",
        "model.body.widths=[8,16]",
        "trainer.max_epochs=1",
        *FAST[1:],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["data"]["model_kwargs"] == {"sample_rate": 8000}
    assert summary["data"]["input_shape"] == [1, 2000] and summary["data"]["class_names"] == sorted(TONES)

    evaluation = run_cli(f"run_dir={run_dir}", cwd=tmp_path, script="trimlab-eval")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "reproduces the run's summary: True" in evaluation.stdout

    output = tmp_path / "predictions.csv"
    predicted = run_cli(f"run_dir={run_dir}", f"inputs={tiny_wavs}", f"output={output}", cwd=tmp_path,
                        script="trimlab-predict")  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 30 and [r["input"] for r in rows] == sorted(str(p) for p in tiny_wavs.rglob("*.wav"))
    assert all(r["class_name"] in TONES and 0.0 < float(r["probability"]) <= 1.0 for r in rows)


def test_front_end_stays_float32_under_bf16():
    from trimlab.models.speech import SpeechClassifier

    model = SpeechClassifier([1, 8000], 5, sample_rate=8000).to(torch.bfloat16).eval()
    assert model(torch.randn(2, 1, 8000, dtype=torch.bfloat16)).dtype == torch.bfloat16
    loud = torch.full((1, 1, 8000), 30.0)  # fp16 would overflow on its mel energies
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.isfinite(SpeechClassifier([1, 8000], 5, sample_rate=8000).eval().frontend(loud)).all()
