"""Tokenizers from the `tokenizers` library: a WordPiece vocabulary trained on the train split (cached by a
fingerprint of that split and the settings), or the tokenizer of a local pretrained model dir.

Both become one `Tokenizer` wrapper that truncates to `max_length` and adds [CLS] … [SEP], so the rest of the
code does not care where the vocabulary came from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trimlab.errors import DataError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class Tokenizer:
    def __init__(self, backend, max_length: int) -> None:
        backend.enable_truncation(max_length)
        backend.no_padding()  # padding happens per batch (dynamic), in the DataModule's collate
        self.backend = backend
        vocab = backend.get_vocab()
        missing = [token for token in ("[UNK]", "[CLS]", "[SEP]") if token not in vocab]
        if missing:
            raise DataError(f"the tokenizer lacks the special tokens {missing}; use a BERT-style WordPiece tokenizer")
        self.unk_id = vocab["[UNK]"]
        self.pad_token_id = vocab.get("[PAD]", 0)
        self.special_ids = [vocab[token] for token in SPECIALS if token in vocab]

    def encode_batch(self, texts: list[str]):
        return self.backend.encode_batch(texts)

    def get_vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def to_str(self) -> str:
        return self.backend.to_str()


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """A `tokenizer.json` file, or a model dir holding one (or a vocab that transformers can read)."""
    from tokenizers import Tokenizer as Backend

    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        try:
            return Tokenizer(Backend.from_file(str(file)), max_length)
        except Exception as err:  # the Rust side raises plain Exception for malformed JSON
            raise DataError(f"cannot read tokenizer {file} ({err}); point data.tokenizer_path at a valid one") from err
    if path.is_dir():
        from transformers import AutoTokenizer

        try:
            pretrained = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            return Tokenizer(pretrained.backend_tokenizer, max_length)
        except (OSError, ValueError) as err:
            raise DataError(f"no usable tokenizer in {path} ({err})") from err
    raise DataError(f"tokenizer path {path} does not exist; set data.tokenizer_path=<model dir or tokenizer.json>")


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRIMLAB_CACHE") or Path.home() / ".cache" / "trimlab")


def train_wordpiece(
    texts: list[str], vocab_size: int, lowercase: bool, max_length: int, cache_dir: str | None = None
) -> Tokenizer:
    """Train (or reuse) a BERT-style WordPiece tokenizer on `texts`."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    key = hashlib.sha256(f"{vocab_size}:{lowercase}:".encode() + "\x1f".join(texts).encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cached = cache / "tokenizers" / f"wordpiece-{key}.json"
    if cached.is_file():
        try:
            return Tokenizer(Backend.from_file(str(cached)), max_length)
        except Exception:  # a damaged cache entry is rebuilt, not trusted
            cached.unlink(missing_ok=True)

    backend = Backend(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    try:
        from trimlab.report import write_text

        write_text(cached, backend.to_str())
    except OSError:
        pass  # a read-only cache only costs the retraining next time
    return Tokenizer(backend, max_length)
