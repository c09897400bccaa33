"""Text DataModules: SST-2, AG News, SMS spam and any CSV/TSV, tokenized once up front.

Each dataset only says how to read its rows (`read`); tokenizing, splitting, batching with dynamic padding and
token dropout are shared here. A batch's inputs are `{"input_ids", "attention_mask"}`, which the task passes
to the backbone as keyword arguments.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from trimlab.data.base import (
    ArrayDataset,
    ClassificationDataModule,
    LengthGroupedSampler,
    check_fraction,
    fingerprint,
    resolve_root,
    stratified_split,
)
from trimlab.data.tables import checked_fields, class_numbers, read_numbered
from trimlab.data.tokenizer import load_tokenizer, train_wordpiece
from trimlab.errors import DataError

Rows = tuple[list[str], list[str]]  # texts, labels as written in the file


class TextDataModule(ClassificationDataModule):
    """Texts held as lists of token-id tensors; padded per batch to the longest text in it."""

    modality = "text"

    def __init__(
        self,
        root: str | None = None,
        tokenizer: str = "wordpiece",
        tokenizer_path: str | None = None,
        vocab_size: int = 8000,
        lowercase: bool = True,
        max_length: int = 128,
        token_dropout: float = 0.0,
        group_by_length: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if tokenizer not in ("wordpiece", "pretrained"):
            raise DataError(f"data.tokenizer={tokenizer} is unknown; use wordpiece or pretrained")
        if int(max_length) < 4:
            raise DataError(f"data.max_length={max_length} is too short; use at least 4 tokens")
        self.root, self.tokenizer_kind, self.tokenizer_path = root, tokenizer, tokenizer_path
        self.vocab_size, self.lowercase, self.max_length = int(vocab_size), bool(lowercase), int(max_length)
        self.token_dropout, self.group_by_length = float(token_dropout), bool(group_by_length)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.cache_dir = cache_dir
        self.input_shape = (self.max_length,)
        self.tokenizer = None
        self.collate = self.pad_batch

    # --- what each dataset provides -------------------------------------------------------------------------
    def read(self) -> dict[str, Rows]:
        """Rows per split: `{"train": ..., "test": ...}` and optionally `"val"`; missing splits are carved."""
        raise NotImplementedError

    def label_names(self, labels: list[str]) -> list[str]:
        """Class names in index order; by default the sorted distinct labels of the train split."""
        return sorted(set(labels))

    # --- shared ---------------------------------------------------------------------------------------------
    def load(self) -> dict[str, ArrayDataset]:
        rows = self.carve(self.read())
        self.class_names = self.label_names(rows["train"][1])
        index = {name: i for i, name in enumerate(self.class_names)}
        for split, (_, labels) in rows.items():
            unknown = sorted(set(labels) - set(index))
            if unknown:
                raise DataError(
                    f"the {split} split has labels absent from training: {', '.join(map(repr, unknown[:5]))}; "
                    f"training labels are {', '.join(map(repr, self.class_names[:10]))}"
                )
        all_texts = [text for texts, _ in rows.values() for text in texts]
        self.data_fingerprint = fingerprint(
            np.frombuffer("\x1f".join(all_texts).encode(), dtype=np.uint8),
            np.array([index[label] for _, labels in rows.values() for label in labels]),
            extra=f"{type(self).__name__}:{self.split_seed}:{self.max_length}",
        )
        self.use_tokenizer(self.make_tokenizer(rows["train"][0]))
        return {
            split: ArrayDataset(self.encode(texts), torch.tensor([index[label] for label in labels]), texts)
            for split, (texts, labels) in rows.items()
        }

    def carve(self, rows: dict[str, Rows]) -> dict[str, Rows]:
        """Stratified, seeded val (and test) splits from the train rows when the files have none."""
        texts, labels = rows["train"]
        wanted = [name for name in ("val", "test") if name not in rows]
        if not wanted:
            return rows
        fractions = [self.val_fraction if name == "val" else self.test_fraction for name in wanted]
        if len(set(labels)) < 2 or len(texts) < 10:
            raise DataError(f"{len(texts)} train rows with {len(set(labels))} label(s): too few to split")
        parts = stratified_split(np.array(labels), fractions, self.split_seed)
        out = dict(rows)
        for name, idx in zip(["train", *wanted], parts, strict=True):
            out[name] = ([texts[i] for i in idx], [labels[i] for i in idx])
        return out

    def data_dir(self, relative: str, probe: str) -> Path:
        base = resolve_root(self.root, type(self).__name__.removesuffix("DataModule"), relative) / relative
        if not (base / probe).is_file():
            raise DataError(
                f"{probe} not found in {base.absolute()}; set env TRIMLAB_DATA or data.root=<dir> to the dir "
                f"that holds {relative}/"
            )
        return base

    def prepare_data(self) -> None:
        self.read()  # fails early, before any run dir is written, on a missing file or a wrong column

    def make_tokenizer(self, train_texts: list[str]):
        if self.artifacts_from is not None and (Path(self.artifacts_from) / "tokenizer.json").is_file():
            return load_tokenizer(Path(self.artifacts_from) / "tokenizer.json", self.max_length)
        if self.tokenizer_kind == "pretrained":
            if not self.tokenizer_path:
                raise DataError("data.tokenizer=pretrained needs data.tokenizer_path=<model dir or tokenizer.json>")
            return load_tokenizer(Path(self.tokenizer_path), self.max_length)
        return train_wordpiece(train_texts, self.vocab_size, self.lowercase, self.max_length, self.cache_dir)

    def train_sampler(self, dataset: ArrayDataset):
        """Batches of similar-length texts: on SST-2 this cuts the padded tokens per batch about threefold."""
        if not self.group_by_length:
            return super().train_sampler(dataset)
        return LengthGroupedSampler([len(x) for x in dataset.inputs], self.batch_size, self.shuffle_seed)

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        return [torch.tensor(e.ids, dtype=torch.int32) for e in self.tokenizer.encode_batch(texts)]

    def use_tokenizer(self, tokenizer) -> None:
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id
        self.model_kwargs = {"vocab_size": tokenizer.get_vocab_size(), "pad_id": self.pad_id}

    def pad_batch(self, items: list[tuple[torch.Tensor, torch.Tensor]]):
        """Dynamic padding: each batch is as long as its longest text, not `max_length`."""
        ids, *rest = zip(*items, strict=True)  # rest: targets, and a teacher's logits when distilling
        length = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            attention_mask[row, : len(x)] = 1
        return ({"input_ids": input_ids, "attention_mask": attention_mask}, *(torch.stack(r) for r in rest))

    def augment_batch(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Token dropout: replace a fraction of real tokens (never [CLS]/[SEP]/padding) with [UNK]."""
        if self.token_dropout <= 0:
            return inputs
        ids = inputs["input_ids"]
        special = torch.tensor(self.tokenizer.special_ids, device=ids.device)
        droppable = (inputs["attention_mask"] > 0) & ~torch.isin(ids, special)
        drop = droppable & (torch.rand(ids.shape, device=ids.device) < self.token_dropout)
        return {**inputs, "input_ids": ids.masked_fill(drop, self.tokenizer.unk_id)}

    def signature(self) -> dict:
        """The vocabulary: embeddings trained with one tokenizer are noise under another."""
        return {"tokenizer": fingerprint(np.frombuffer(self.tokenizer.to_str().encode(), dtype=np.uint8))}

    def save_artifacts(self, run_dir: Path) -> None:
        from trimlab.report import write_text

        write_text(Path(run_dir) / "tokenizer.json", self.tokenizer.to_str())

    def restore(self, run_dir: Path, facts: dict) -> None:
        super().restore(run_dir, facts)
        path = Path(run_dir) / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"{path} is missing: the run's tokenizer is needed to read text; re-run the training")
        self.use_tokenizer(load_tokenizer(path, self.max_length))

    def predict_dataset(self, path: Path) -> tuple[list[str], ArrayDataset]:
        """A text file with one text per line (blank lines skipped)."""
        if not path.is_file():
            raise DataError(f"inputs {path} is not a file; pass a text file with one text per line")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as err:
            raise DataError(f"cannot read {path} as UTF-8 text ({err})") from err
        texts = [line for line in lines if line]
        if not texts:
            raise DataError(f"{path} has no text lines")
        return texts, ArrayDataset(self.encode(texts), torch.full((len(texts),), -1))

    serve_spec = "a text: a non-empty string"

    def serve_item(self, item) -> torch.Tensor:
        """A non-empty string, tokenized as `predict_dataset` tokenizes a line."""
        if not isinstance(item, str):
            raise ValueError(f"expected a text (a string), got {type(item).__name__}")
        if not item.strip():
            raise ValueError("is an empty text; pass a non-empty string")
        return self.encode([item.strip()])[0]


class SST2DataModule(TextDataModule):
    """GLUE SST-2 at `<root>/sst2/SST-2/`: dev.tsv is the labelled test set (test.tsv has no labels); val is
    carved from train.tsv. Read with quoting off; the trailing space of each sentence is stripped."""

    def read(self) -> dict[str, Rows]:
        base = self.data_dir("sst2/SST-2", "train.tsv")
        names = {"0": "negative", "1": "positive"}
        out = {}
        for split, name in (("train", "train.tsv"), ("test", "dev.tsv")):
            texts, labels = checked_fields(base / name, read_numbered(base / name, "\t", csv.QUOTE_NONE, True), 0, 1)
            out[split] = ([text.strip() for text in texts], [names.get(label, label) for label in labels])
        return out

    def label_names(self, labels: list[str]) -> list[str]:
        return ["negative", "positive"]


class AGNewsDataModule(TextDataModule):
    """AG News `test.csv` only (7,600 rows): stratified, seeded train/val/test split. Text = title + description."""

    def read(self) -> dict[str, Rows]:
        base = self.data_dir("ag_news/ag_news_csv", "test.csv")
        rows = read_numbered(base / "test.csv", ",", csv.QUOTE_MINIMAL, header=False)
        self.names = [line.strip() for line in (base / "classes.txt").read_text().splitlines() if line.strip()]
        _, numbers = checked_fields(base / "test.csv", rows, 2, 0)
        texts = [f"{row[1]}. {row[2]}" for _, row in rows]
        return {"train": (texts, class_numbers(base / "test.csv", rows, numbers, self.names))}

    def label_names(self, labels: list[str]) -> list[str]:
        return list(self.names)


class SMSSpamDataModule(TextDataModule):
    """SMS Spam Collection (5,574 rows, read with quoting off); stratified split; ham 87% / spam 13%."""

    def read(self) -> dict[str, Rows]:
        base = self.data_dir("sms_spam", "SMSSpamCollection")
        rows = read_numbered(base / "SMSSpamCollection", "\t", csv.QUOTE_NONE, header=False)
        return {"train": checked_fields(base / "SMSSpamCollection", rows, 1, 0)}

    def label_names(self, labels: list[str]) -> list[str]:
        return ["ham", "spam"]


class TextCSVDataModule(TextDataModule):
    """Any CSV/TSV with named text and label columns (labels may be strings); an optional separate test file."""

    def __init__(
        self,
        file: str = "",
        test_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        delimiter: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.file, self.test_file, self.delimiter = file, test_file, delimiter
        self.text_column, self.label_column = text_column, label_column

    def path(self, name: str) -> Path:
        path = Path(name).expanduser()
        if not name:
            raise DataError("data=text_csv needs data.file=<csv or tsv>")
        return path if path.is_absolute() or not self.root else Path(self.root).expanduser() / path

    def read_file(self, path: Path) -> Rows:
        delimiter = self.delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
        rows = read_numbered(path, delimiter, csv.QUOTE_MINIMAL, header=False)
        if not rows:
            raise DataError(f"{path} is empty")
        header = [h.strip() for h in rows[0][1]]
        for role, column in (("text", self.text_column), ("label", self.label_column)):
            if column not in header:
                raise DataError(
                    f"{path} has no {role} column {column!r}; its columns are {header}; "
                    f"set data.{role}_column=<one of them>"
                )
        return checked_fields(path, rows[1:], header.index(self.text_column), header.index(self.label_column))

    def read(self) -> dict[str, Rows]:
        out = {"train": self.read_file(self.path(self.file))}
        if self.test_file:
            out["test"] = self.read_file(self.path(self.test_file))
        return out
