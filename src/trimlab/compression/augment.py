"""An augmented transfer set for distilling a text classifier, after Tang et al. (2019), "Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks": a small student learns most from a teacher when
the teacher labels many more sentences than the train split holds. Each train sentence yields `n_copies`
variants; in each, every word is

- masked (`[MASK]`) with probability `p_mask`, else
- replaced with probability `p_replace` by another word of the student tokenizer's vocabulary (the paper swaps
  in a word of the same part of speech; a tagger is more than this needs),

and then, with probability `p_ngram`, the variant is cut to a random n-gram of 1 to `max_ngram` words. The
teacher's logits on the variants are computed once and cached (distillation.py); the student trains on the train
split and the variants, a variant's hard label being the teacher's prediction.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from trimlab.data.tokenizer import SPECIALS
from trimlab.errors import ConfigError

MASK = "[MASK]"


class TextAugment:
    def __init__(self, p_mask: float = 0.1, p_replace: float = 0.1, p_ngram: float = 0.25, n_copies: int = 4,
                 max_ngram: int = 5, seed: int = 0) -> None:  # fmt: skip
        self.p_mask, self.p_replace, self.p_ngram = float(p_mask), float(p_replace), float(p_ngram)
        self.n_copies, self.max_ngram, self.seed = int(n_copies), int(max_ngram), int(seed)
        probabilities = (self.p_mask, self.p_replace, self.p_ngram)
        if not all(0 <= p <= 1 for p in probabilities) or self.p_mask + self.p_replace > 1:
            raise ConfigError(
                f"compression.distill.augment: p_mask={p_mask}, p_replace={p_replace}, p_ngram={p_ngram} must each "
                "be in [0, 1], with p_mask + p_replace <= 1"
            )
        if self.n_copies < 1 or self.max_ngram < 1:
            raise ConfigError(
                f"compression.distill.augment: n_copies={n_copies} and max_ngram={max_ngram} must be >= 1"
            )

    def settings(self) -> dict[str, Any]:
        return {"p_mask": self.p_mask, "p_replace": self.p_replace, "p_ngram": self.p_ngram,
                "n_copies": self.n_copies, "max_ngram": self.max_ngram, "seed": self.seed}  # fmt: skip

    def variants(self, texts: list[str], vocabulary: list[str]) -> tuple[list[str], dict[str, int]]:
        """`n_copies` variants of each text, and the counts of what was done (words masked and replaced, variants
        cut to an n-gram), which the run's facts report."""
        rng = np.random.default_rng(self.seed)
        out, counts = [], Counter()
        for text in texts:
            words = text.split()
            for _ in range(self.n_copies):
                out.append(" ".join(self.variant(words, vocabulary, rng, counts)))
        counts["sentences"] = len(out)
        return out, dict(counts)

    def variant(self, words: list[str], vocabulary: list[str], rng: np.random.Generator, counts: Counter) -> list[str]:
        draws, picks = rng.random(len(words)), rng.integers(len(vocabulary), size=len(words))
        new = []
        for word, draw, pick in zip(words, draws, picks, strict=True):
            if draw < self.p_mask:
                new.append(MASK)
                counts["masked"] += 1
            elif draw < self.p_mask + self.p_replace:
                replacement = vocabulary[pick]
                if replacement == word.lower():  # another word: the next one in the vocabulary
                    replacement = vocabulary[(pick + 1) % len(vocabulary)]
                new.append(replacement)
                counts["replaced"] += 1
            else:
                new.append(word)
        counts["words"] += len(words)
        if rng.random() < self.p_ngram and len(new) > 1:
            n = int(rng.integers(1, min(self.max_ngram, len(new)) + 1))
            start = int(rng.integers(0, len(new) - n + 1))
            new = new[start : start + n]
            counts["ngram"] += 1
        return new


def vocabulary(tokenizer: Any) -> list[str]:
    """Whole words of a WordPiece vocabulary (no `##` pieces, specials, digits or punctuation), sorted."""
    words = [token for token in tokenizer.backend.get_vocab() if token.isalpha() and token not in SPECIALS]
    if not words:
        raise ConfigError("compression.distill.augment: the student's tokenizer has no whole words to replace with")
    return sorted(words)
