"""Distillation for text students: the augmented transfer set (compression.distill.augment) makes the stated
fractions of masked, replaced and n-gram variants; the hidden-state loss (compression.distill.hidden) is zero for
identical models; a student trains on the train split plus variants its teacher labelled once, matching its
teacher's hidden states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from trimlab.compression.augment import MASK, TextAugment
from trimlab.compression.hidden import HiddenStates, length_order, teacher_outputs, teacher_pass
from trimlab.errors import ConfigError
from trimlab.models.text import TransformerClassifier
from trimlab.models.vision import SmallCNN

VOCABULARY = [f"w{i}" for i in range(500)]


def sentences(count: int, length: int = 10) -> list[str]:
    rng = np.random.default_rng(1)
    return [" ".join(f"t{j}" for j in rng.integers(0, 50, length)) for _ in range(count)]


def test_masking_and_replacement_act_on_the_stated_fraction_of_words():
    texts = sentences(1000)
    out, counts = TextAugment(p_mask=0.15, p_replace=0.2, p_ngram=0.0, n_copies=2).variants(texts, VOCABULARY)
    assert len(out) == 2000 == counts["sentences"]
    originals = [t for t in texts for _ in range(2)]  # each text's copies follow it
    masked = replaced = total = 0
    for variant, original in zip(out, originals, strict=True):
        new, old = variant.split(), original.split()
        assert len(new) == len(old)  # no n-grams: every word kept in place, changed or not
        masked += sum(w == MASK for w in new)
        replaced += sum(w != MASK and w != o for w, o in zip(new, old, strict=True))
        assert all(w in (o, MASK) or w in VOCABULARY for w, o in zip(new, old, strict=True))
        total += len(old)
    assert masked / total == pytest.approx(0.15, abs=0.01) and masked == counts["masked"]
    assert replaced / total == pytest.approx(0.20, abs=0.01) and replaced == counts["replaced"]  # always another


def test_ngram_sampling_cuts_the_stated_fraction_of_variants_to_a_contiguous_ngram():
    texts = sentences(1000)
    augment = TextAugment(p_mask=0.0, p_replace=0.0, p_ngram=0.3, n_copies=2, max_ngram=5)
    out, counts = augment.variants(texts, VOCABULARY)
    originals = [t for t in texts for _ in range(2)]
    cut = [v for v, o in zip(out, originals, strict=True) if v != o]
    assert len(cut) / len(out) == pytest.approx(0.3, abs=0.03) and len(cut) == counts["ngram"]
    for variant, original in zip(out, originals, strict=True):
        if variant != original:
            assert 1 <= len(variant.split()) <= 5 and f" {variant} " in f" {original} "  # a slice of the sentence
    assert augment.variants(texts, VOCABULARY)[0] == out  # seeded: the cached teacher logits stay valid


@pytest.mark.parametrize("settings", [{"p_mask": 0.7, "p_replace": 0.5}, {"p_ngram": 1.5}, {"n_copies": 0}])
def test_impossible_augment_settings_are_refused(settings):
    with pytest.raises(ConfigError, match="compression.distill.augment"):
        TextAugment(**settings)


def transformer(seed: int) -> TransformerClassifier:
    torch.manual_seed(seed)
    return TransformerClassifier(input_shape=(12,), num_classes=2, vocab_size=50, pad_id=0, dim=16, depth=2, heads=2)


def test_the_hidden_state_loss_is_zero_for_identical_models_and_trains_the_student_otherwise():
    ids = torch.randint(1, 50, (6, 12))
    mask = (torch.arange(12) < torch.randint(4, 13, (6, 1))).long()  # sentences of different lengths
    loader = [({"input_ids": ids, "attention_mask": mask}, torch.zeros(6))]
    teacher = transformer(0).eval()
    hidden = HiddenStates(weight=1.0, layer_map=[[1, 1], [2, 2]])
    student = transformer(0).eval()
    hidden.attach(student, teacher)
    logits, states = teacher_pass(teacher, loader, hidden.teacher_layers)
    assert states.shape == (6, 2, 16) and torch.equal(student(ids, mask), logits)
    assert float(hidden.loss(mask, states.float())) == 0.0  # identical models: exactly zero

    other = transformer(1).train()
    hidden = HiddenStates(weight=0.5, layer_map=[[2, 1]])
    hidden.attach(other, teacher)
    other(ids, mask)
    loss = hidden.loss(mask, states[:, :1].float())
    assert float(loss) > 0
    loss.backward()
    assert other.blocks[1].mlp[0].weight.grad.abs().sum() > 0 and hidden.project.weight.grad.abs().sum() > 0
    assert other.blocks[0].mlp[0].weight.grad.abs().sum() > 0  # through block 2 into block 1


def test_the_teacher_pass_in_length_order_returns_each_items_outputs_in_the_datasets_order():
    from types import SimpleNamespace

    from trimlab.data.base import ArrayDataset

    torch.manual_seed(0)
    ids = [torch.randint(1, 50, (int(n),), dtype=torch.int32) for n in torch.randint(2, 13, (20,))]
    dataset = ArrayDataset(ids, torch.zeros(20))

    def collate(items):
        length = max(len(x) for x, _ in items)
        input_ids = torch.stack([torch.cat([x, x.new_zeros(length - len(x))]).long() for x, _ in items])
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}, torch.zeros(len(items))

    order = length_order(dataset)
    assert sorted(order.tolist()) == list(range(20)) and order.tolist() != list(range(20))
    assert [len(ids[i]) for i in order] == sorted(len(x) for x in ids)
    teacher = transformer(0).eval()
    logits, states = teacher_outputs(teacher, dataset, SimpleNamespace(eval_batch_size=4, collate=collate), [2])
    alone = [teacher_pass(teacher, [collate([item])], [2]) for item in dataset]  # one item per batch: no padding
    assert torch.allclose(logits, torch.cat([a[0] for a in alone]), atol=1e-5)
    assert torch.allclose(states, torch.cat([a[1] for a in alone]), atol=1e-5)
    assert torch.equal(length_order(ArrayDataset(torch.zeros(5, 3), torch.zeros(5))), torch.arange(5))


def test_hidden_states_need_transformer_blocks_in_range():
    cnn = SmallCNN(input_shape=(1, 8, 8), num_classes=3, widths=[4, 8])
    with pytest.raises(ConfigError, match="has none; use it with model=transformer"):
        HiddenStates(layer_map=[[1, 1]]).attach(cnn, transformer(0))
    with pytest.raises(ConfigError, match="of TransformerClassifier, which has blocks 1 to 2"):
        HiddenStates(layer_map=[[1, 3]]).attach(transformer(0), transformer(0))


TEXT = ["data=text_csv", "model=transformer", "model.dim=16", "model.heads=2", "model.depth=1", "data.vocab_size=200",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "cost.latency_warmup=1", "cost.latency_repeats=1",
        "cost.throughput_repeats=1", "cost.compile=false"]  # fmt: skip


@pytest.mark.slow
def test_a_text_student_learns_from_the_train_split_and_its_variants_labelled_by_the_teacher(tmp_path):
    rows = [f"{'good fine great' if i % 2 else 'bad awful poor'} film number {i},{'pos' if i % 2 else 'neg'}"
            for i in range(60)]  # fmt: skip
    (tmp_path / "texts.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    data = [f"data.file={tmp_path / 'texts.csv'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    teacher = run_cli(*TEXT, *data, cwd=tmp_path)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    teacher_dir = teacher.stdout.strip().splitlines()[-1]
    augment = "++compression.distill.augment={p_mask: 0.2, p_replace: 0.2, p_ngram: 0.5, n_copies: 3}"
    hidden = "++compression.distill.hidden={weight: 1.0, layer_map: [[1, 1]]}"
    distill = ["compression=[distill]", f"compression.distill.teacher={teacher_dir}", augment, hidden]
    student = run_cli(*TEXT, *data, "model.dim=8", *distill, cwd=tmp_path)
    assert student.returncode == 0, student.stderr[-3000:]
    summary = json.loads((Path(student.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    facts = summary["metrics"]["after"]["distill"]["facts"]["transfer_set"]
    train_items = facts["train_items"]
    assert facts["sentences"] == 3 * train_items and facts["n_copies"] == 3
    assert 0 < facts["masked"] < facts["words"] and 0 < facts["replaced"] < facts["words"] and facts["ngram"] > 0
    assert summary["cost"]["train_samples"] == 4 * train_items  # one epoch over the train split and its variants
    passes = summary["metrics"]["after"]["distill"]["facts"]["teacher_pass_s"]
    assert set(passes) == {"train", "variants"} and all(seconds > 0 for seconds in passes.values())
    assert summary["metrics"]["after"]["distill"]["facts"]["hidden"] == {"weight": 1.0, "layer_map": [[1, 1]]}
    # One teacher pass over the train split and one over the variants, each cached with the teacher's states.
    cached = [torch.load(p, weights_only=True) for p in (tmp_path / "cache" / "teacher_logits").glob("*.pt")]
    assert sorted(len(c["states"]) for c in cached) == [train_items, 3 * train_items]
    assert all(c["states"].shape[1:] == (1, 16) for c in cached)  # one mapped layer of the 16-wide teacher
