from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, write_idx
from trimlab.data.base import EpochShuffleSampler, stratified_split
from trimlab.data.speech import WavFolderDataModule
from trimlab.data.text import AGNewsDataModule, SMSSpamDataModule, SST2DataModule, TextCSVDataModule, TextDataModule
from trimlab.data.transforms import normalize, random_shift, to_batch
from trimlab.data.vision import DigitsDataModule, ImageFolderDataModule, MNISTDataModule, read_idx
from trimlab.errors import ConfigError, DataError


def test_random_shift_is_a_translation_with_fill():
    images = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    shifted = random_shift(images, 1, fill=-1.0)
    padded = torch.nn.functional.pad(images[0], (1, 1, 1, 1), value=-1.0)
    candidates = {(dy, dx): padded[:, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)}
    seen = set()
    for image in shifted:
        match = [key for key, crop in candidates.items() if torch.equal(crop, image)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 4  # many different offsets, not one
    assert torch.equal(random_shift(images, 0), images)


def test_normalize_and_to_batch_known_values():
    batch = to_batch(np.full((2, 8, 8), 0.5, dtype=np.float32), (1, 4, 4))
    assert batch.shape == (2, 1, 4, 4)
    assert torch.allclose(batch, torch.full_like(batch, 0.5))
    assert torch.allclose(normalize(batch, 0.25, 0.5), torch.full_like(batch, 0.5))
    rgb = to_batch(np.zeros((3, 10, 12, 3), dtype=np.float32), (3, 32, 32))
    assert rgb.shape == (3, 3, 32, 32)
    gray_from_rgb = to_batch(np.stack([np.full((5, 5), v, np.float32) for v in (0.0, 0.3, 0.6)], -1)[None], (1, 5, 5))
    assert torch.allclose(gray_from_rgb, torch.full((1, 1, 5, 5), 0.3))


def test_epoch_sampler_is_fixed_per_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    fresh = EpochShuffleSampler(50, seed=3)
    fresh.set_epoch(1)
    assert list(fresh) == second  # a resumed run sees the same order


def test_stratified_split_keeps_class_balance():
    labels = np.repeat(np.arange(4), 50)
    train, val, test = stratified_split(labels, [0.1, 0.2], seed=0)
    assert len(set(train) | set(val) | set(test)) == 200
    assert len(val) == 20 and len(test) == 40
    assert np.bincount(labels[test]).tolist() == [10, 10, 10, 10]


def test_digits_split_is_deterministic_and_exposes_shape():
    first, second = DigitsDataModule(), DigitsDataModule()
    first.setup(), second.setup()
    assert first.num_classes == 10 and first.input_shape == (1, 8, 8)
    sizes = {name: len(ds) for name, ds in first.splits.items()}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    assert first.data_fingerprint == second.data_fingerprint
    assert torch.equal(first.splits["test"].inputs, second.splits["test"].inputs)
    other = DigitsDataModule(split_seed=1)
    other.setup()
    assert other.data_fingerprint != first.data_fingerprint


def test_fraction_outside_unit_interval_is_rejected():
    with pytest.raises(ConfigError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.5)


def test_read_idx_valid_bad_magic_and_truncated(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    good = tmp_path / "good.gz"
    write_idx(good, images, 0x803)
    assert np.array_equal(read_idx(good, 0x803, (28, 28)), images.astype(np.uint8))
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(good, 0x801, ())
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as handle:
        handle.write(gzip.decompress(good.read_bytes())[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(short, 0x803, (28, 28))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(cut, 0x803, (28, 28))


def test_mnist_datamodule_on_tiny_idx_files(tiny_mnist):
    datamodule = MNISTDataModule(root=str(tiny_mnist), val_fraction=0.1)
    datamodule.prepare_data()
    datamodule.setup()
    assert datamodule.input_shape == (1, 28, 28)
    assert {k: len(v) for k, v in datamodule.splits.items()} == {"train": 180, "val": 20, "test": 50}
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape[1:] == (1, 28, 28) and y.dtype == torch.long


def test_mnist_missing_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="TRIMLAB_DATA") as err:
        MNISTDataModule(root=str(tmp_path)).prepare_data()
    assert str(tmp_path / "MNIST" / "raw") in str(err.value)
    with pytest.raises(DataError, match="no data root|none is set"):
        MNISTDataModule(root=None).prepare_data()


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not found (set TRIMLAB_DATA)")
def test_real_mnist_headers():
    raw = SHARED_DATA / "MNIST" / "raw"
    labels = read_idx(raw / "t10k-labels-idx1-ubyte.gz", 0x801, ())
    images = read_idx(raw / "t10k-images-idx3-ubyte.gz", 0x803, (28, 28))
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).sum() == 10000 and labels.max() == 9


def test_image_folder_reads_classes_and_resizes(tiny_image_folder):
    datamodule = ImageFolderDataModule(root=str(tiny_image_folder.parent), folder="images", image_size=8, channels=3)
    datamodule.setup()
    assert datamodule.class_names == ["cat", "dog", "owl"]
    assert datamodule.splits["train"].inputs.shape[1:] == (3, 8, 8)
    assert sum(len(ds) for ds in datamodule.splits.values()) == 30


def test_image_folder_corrupt_image_is_named(tiny_image_folder):
    bad = tiny_image_folder / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    datamodule = ImageFolderDataModule(root=None, folder=str(tiny_image_folder), image_size=8)
    with pytest.raises(DataError, match="broken.png"):
        datamodule.setup()


def test_augmentation_only_while_training():
    datamodule = DigitsDataModule(augment=True, shift=1)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))

    class FakeTrainer:
        training = False

    datamodule.trainer = FakeTrainer()
    assert datamodule.on_after_batch_transfer(batch, 0)[0] is batch[0]
    FakeTrainer.training = True
    assert not torch.equal(datamodule.on_after_batch_transfer(batch, 0)[0], batch[0])


def test_run_ids_are_fresh_per_job_and_pinned_within_one():
    from trimlab import rundir

    rundir.set_run_id(None)
    first = rundir.current_run_id()
    assert rundir.current_run_id() == first and len(first) == 8
    rundir.set_run_id(None)
    assert rundir.current_run_id() != first
    assert rundir.run_id_from_dir("2026-01-02_03-04-05_ab12cd34") == "ab12cd34"
    assert rundir.run_id_from_dir("3_ab12cd34") == "ab12cd34"


def unlabelled_row(root: Path, dataset: str) -> tuple[TextDataModule, Path, int]:
    """A tiny file in `dataset`'s layout with one row whose label is empty: (datamodule, file, its line)."""
    if dataset == "text_csv":  # a quoted text over two lines and a blank line come before the bad row
        path = root / "t.csv"
        path.write_text('text,label\n"two\nlines",pos\n\nbad film,  \ngood film,pos\n')
        return TextCSVDataModule(file=str(path)), path, 5
    layouts = {
        "sst2": ("sst2/SST-2/train.tsv", "sentence\tlabel\ngood \t1\nbad \t\n", SST2DataModule, 3),
        "sms_spam": ("sms_spam/SMSSpamCollection", "ham\thi there\n\tno label\n", SMSSpamDataModule, 2),
        "ag_news": ("ag_news/ag_news_csv/test.csv", '"3","a","b"\n"","c","d"\n', AGNewsDataModule, 2),
    }
    relative, text, module, line = layouts[dataset]
    path = root / relative
    path.parent.mkdir(parents=True)
    path.write_text(text)
    (path.parent / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    (path.parent / "dev.tsv").write_text("sentence\tlabel\nfine \t1\n")
    return module(root=str(root)), path, line


@pytest.mark.parametrize("dataset", ["text_csv", "sst2", "sms_spam", "ag_news"])
def test_an_empty_label_names_the_file_and_the_line(tmp_path, dataset):
    datamodule, path, line = unlabelled_row(tmp_path, dataset)
    with pytest.raises(DataError) as err:
        datamodule.prepare_data()
    assert f"{path}: line {line} has an empty label (1 such rows)" in str(err.value)


def test_an_ag_news_label_that_is_no_class_number_is_refused(tmp_path):
    base = tmp_path / "ag_news" / "ag_news_csv"
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    (base / "test.csv").write_text('"3","a","b"\n"4","c","d"\n')
    assert AGNewsDataModule(root=str(tmp_path)).read()["train"][1] == ["Business", "Sci/Tech"]
    (base / "test.csv").write_text('"3","a","b"\n"0","c","d"\n')  # 0 once read as the last class
    with pytest.raises(DataError, match="line 2 has label '0', not a class number 1-4"):
        AGNewsDataModule(root=str(tmp_path)).read()


def class_tree(root: Path, kind: str, counts: dict[str, int]) -> ImageFolderDataModule | WavFolderDataModule:
    """An image_folder or wav_folder DataModule over `root/<class>/` holding `counts[class]` files each."""
    import soundfile as sf
    from PIL import Image

    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            if kind == "image":
                Image.fromarray(np.full((4, 4, 3), index * 20, np.uint8)).save(root / name / f"{index}.png")
            else:
                sf.write(root / name / f"{index}.wav", np.full(800, 0.01 * index, np.float32), 8000)
    if kind == "image":
        return ImageFolderDataModule(folder=str(root), image_size=4)
    return WavFolderDataModule(folder=str(root), sample_rate=8000, clip_seconds=0.1)


@pytest.mark.parametrize("kind", ["image", "wav"])
def test_an_empty_class_folder_is_named(tmp_path, kind):
    datamodule = class_tree(tmp_path / "classes", kind, {"a": 10, "b": 0, "c": 10})
    with pytest.raises(DataError) as err:
        datamodule.setup()
    assert f"class folder {tmp_path / 'classes' / 'b'} holds no" in str(err.value)
    assert "add some or remove the folder" in str(err.value)


@pytest.mark.parametrize("kind", ["image", "wav"])
def test_a_folder_with_one_class_is_refused(tmp_path, kind):
    datamodule = class_tree(tmp_path / "classes", kind, {"only": 10})
    with pytest.raises(DataError) as err:
        datamodule.prepare_data()
    assert "only one class folder (only)" in str(err.value) and "a classifier needs at least two" in str(err.value)
