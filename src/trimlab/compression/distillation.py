"""Knowledge distillation: a student (the run's `model`) learns from a finished run's model, its teacher.

Loss (Hinton et al. 2015): α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1−α)·CE(student, label).
The teacher's logits over the train split are computed once, in the teacher's own input format (its tokenizer,
its sample rate), and cached per (teacher checkpoint, data): a MiniLM teacher then costs one pass, not one per
epoch, and can teach a student that reads text with another tokenizer. With `cache: false` the teacher runs on
each student batch instead (same inputs needed; the student's augmentations then reach the teacher too: how
vision and speech students see augmented inputs labelled by their teacher). A text student can instead learn from
an augmented transfer set (`augment`, augment.py): variants of the train sentences, labelled once by the teacher,
and a transformer student can match the teacher's hidden states at mapped layers too (`hidden`, hidden.py).
The teacher is frozen, in eval mode, and held outside the student's module tree: never trained, never saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from trimlab.batches import forward
from trimlab.compression.augment import TextAugment, vocabulary
from trimlab.compression.base import Stage
from trimlab.compression.hidden import HiddenStates, teacher_outputs
from trimlab.compression_checks import check_teacher_dir
from trimlab.errors import ConfigError

log = logging.getLogger(__name__)


class DistillationLoss:
    """Callable the task uses in place of its cross-entropy (a plain object: the teacher stays unregistered)."""

    def __init__(self, temperature: float, alpha: float, teacher: nn.Module | None = None,
                 hidden: HiddenStates | None = None) -> None:  # fmt: skip
        self.temperature, self.alpha, self.teacher, self.hidden = temperature, alpha, teacher, hidden

    def parameters(self) -> list[nn.Parameter]:
        """What the task's optimizer trains beside the student: the hidden-state projection, if any."""
        return self.hidden.parameters() if self.hidden is not None else []

    def teacher_logits(self, inputs: Any, device: torch.device) -> torch.Tensor:
        self.teacher.to(device).eval()
        with torch.no_grad():
            return forward(self.teacher, inputs)

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None, inputs,
        teacher_states: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        if teacher is None:
            teacher = self.teacher_logits(inputs, logits.device)
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
            log_target=True, reduction="batchmean",
        )  # fmt: skip
        loss = self.alpha * t * t * soft + (1 - self.alpha) * F.cross_entropy(logits, target)
        if self.hidden is not None and teacher_states is not None:
            loss = loss + self.hidden.loss(inputs["attention_mask"], teacher_states)
        return loss


class WithTeacherLogits(Dataset):
    """The student's train split with each item's cached teacher logits as a third element (and its pooled
    hidden states as a fourth, with `hidden`)."""

    def __init__(self, dataset: Any, logits: torch.Tensor, states: torch.Tensor | None = None) -> None:
        self.dataset, self.logits, self.states = dataset, logits, states
        self.inputs, self.targets = dataset.inputs, dataset.targets  # samplers read lengths and labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        inputs, target = self.dataset[index]
        if self.states is None:
            return inputs, target, self.logits[index]
        return inputs, target, self.logits[index], self.states[index]


class Distill(Stage):
    """Acts during the main fit (its option file declares `trains_main_fit`): listed first."""

    def __init__(self, teacher: str | None = None, temperature: float = 4.0, alpha: float = 0.7, cache: bool = True,
                 cache_dir: str | None = None, untrained_teacher: bool = False,
                 augment: dict | None = None, hidden: dict | None = None) -> None:  # fmt: skip
        # untrained_teacher: a fast_dev_run's stand-in (checks.smoke_test_stand_ins), never a real teacher
        self.untrained = bool(untrained_teacher)
        self.teacher_dir = None if self.untrained else check_teacher_dir(teacher)
        cache = cache and not self.untrained  # the stand-in reads the student's own batches
        if not temperature > 0 or not 0 <= alpha <= 1:
            raise ConfigError(f"compression.distill: temperature={temperature} must be > 0, alpha={alpha} in [0, 1]")
        self.temperature, self.alpha, self.cache = float(temperature), float(alpha), bool(cache)
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "trimlab") / "teacher_logits"
        self.teacher: nn.Module | None = None
        self.teacher_data: Any = None
        self.augment = TextAugment(**augment) if augment and not self.untrained else None  # a stand-in: plain
        self.transfer_set: dict[str, Any] = {}
        self.teacher_pass_s: dict[str, float] = {}  # per pass ("train", "variants"); 0 when read from the cache
        self.hidden = HiddenStates(**hidden) if hidden and not self.untrained else None

    def check(self, datamodule: Any, model: nn.Module) -> None:
        from trimlab.factory import load_run

        if self.hidden and not self.cache:
            raise ConfigError("compression.distill.hidden caches the teacher's hidden states with its logits: use "
                              "cache=true")  # fmt: skip
        if self.augment and (datamodule.modality != "text" or not self.cache):
            raise ConfigError(
                "compression.distill.augment makes variants of text sentences for the teacher to label once: it needs "
                "text data and cache=true (vision and speech students: cache=false, their augmentations reach the "
                "teacher)"
            )
        if self.untrained:
            return
        cfg, summary = load_run(self.teacher_dir)
        if summary.get("status") != "completed":
            raise ConfigError(f"teacher {self.teacher_dir} did not complete (status {summary.get('status')})")
        names = list(summary.get("data", {}).get("class_names", []))
        if len(names) != datamodule.num_classes:
            raise ConfigError(
                f"teacher {self.teacher_dir} predicts {len(names)} classes, this data has {datamodule.num_classes}; "
                "distill from a teacher trained on the same classes"
            )
        if names != list(datamodule.class_names):
            raise ConfigError(f"teacher classes {names} differ from this data's {datamodule.class_names}")
        teacher_data = f"{cfg.data._target_}"
        same_inputs = summary["data"].get("signature") == datamodule.signature()
        if not self.cache and not (same_inputs and teacher_data.endswith(type(datamodule).__name__)):
            raise ConfigError(
                "compression.distill.cache=false runs the teacher on the student's batches, but the teacher reads "
                "its inputs another way (tokenizer, sample rate or dataset); use cache=true"
            )

    def wrap(self, task: Any, datamodule: Any) -> None:
        """Load the teacher, give the task the distillation loss, and the train split its teacher logits."""
        if self.untrained:
            self.teacher, self.teacher_data = untrained_copy(task.backbone), datamodule
        else:
            self.teacher, self.teacher_data = load_teacher(self.teacher_dir)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher.eval()
        if self.hidden:
            self.hidden.attach(task.backbone, self.teacher)
        if self.cache:
            train, (logits, states) = datamodule.splits["train"], self.cached_logits(datamodule)
            if self.augment:
                train, logits, states = self.augmented(datamodule, train, logits, states)
            datamodule.splits["train"] = WithTeacherLogits(train, logits, states)
            task.distillation = DistillationLoss(self.temperature, self.alpha, hidden=self.hidden)
            return
        task.distillation = DistillationLoss(self.temperature, self.alpha, self.teacher)

    def cached_logits(self, datamodule: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        student, teacher = datamodule.splits["train"], self.teacher_data.splits["train"]
        if len(student) != len(teacher) or not torch.equal(student.targets, teacher.targets):
            raise ConfigError(
                f"the teacher's train split ({len(teacher)} items) is not the student's ({len(student)}): distill "
                "on the same dataset and split settings (split_seed, val_fraction, labelled_fraction)"
            )
        return self.teacher_logits(teacher, datamodule.num_classes, "train")

    def augmented(self, datamodule: Any, train: Any, logits: torch.Tensor, states: torch.Tensor | None):
        """The train split plus its variants (augment.py), with the teacher's logits on both; a variant's label
        is the teacher's prediction."""
        from trimlab.data.base import ArrayDataset

        if train.texts is None:
            raise ConfigError("compression.distill.augment: this train split keeps no sentences to vary")
        texts, counts = self.augment.variants(train.texts, vocabulary(datamodule.tokenizer))
        for_teacher = ArrayDataset(self.teacher_data.encode(texts), torch.zeros(len(texts)))
        settings = json.dumps(self.augment.settings())
        variant_logits, variant_states = self.teacher_logits(for_teacher, datamodule.num_classes, settings)
        self.transfer_set = {**self.augment.settings(), **counts, "train_items": len(train)}
        log.info("augmented transfer set: %d train items + %d variants", len(train), len(texts))
        targets = torch.cat([train.targets, variant_logits.argmax(-1)])
        both = ArrayDataset(list(train.inputs) + datamodule.encode(texts), targets)
        return (
            both,
            torch.cat([logits, variant_logits]),
            None if states is None else torch.cat([states, variant_states]),
        )

    def teacher_logits(self, dataset: Any, num_classes: int, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits over `dataset` (in the teacher's input format) and, with `hidden`, its pooled states
        at the mapped layers; cached per (teacher checkpoint, its data, `what`): computed once, however many
        students learn from them. Its seconds go to `teacher_pass_s` ("train", or "variants" for a transfer set)."""
        started, name = time.perf_counter(), "train" if what == "train" else "variants"
        checkpoint = teacher_checkpoint(self.teacher_dir)
        stat = checkpoint.stat()
        key = f"{checkpoint.absolute()}|{stat.st_size}|{stat.st_mtime_ns}|{self.teacher_data.data_fingerprint}"
        key += "" if what == "train" else f"|{what}"
        layers = self.hidden.teacher_layers if self.hidden else None
        key += f"|states:{layers}" if layers else ""
        path = self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, weights_only=True)
                logits, states = (saved["logits"], saved["states"]) if isinstance(saved, dict) else (saved, None)
                if logits.shape == (len(dataset), num_classes) and (states is None) == (layers is None):
                    self.teacher_pass_s[name] = 0.0
                    return logits, states
            except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
                log.warning("teacher logits cache %s is unreadable: recomputing it", path)
        log.info("computing the teacher's logits over %d items (cached in %s)", len(dataset), path)
        logits, states = teacher_outputs(self.teacher.eval(), dataset, self.teacher_data, layers)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs never share a temp file
        torch.save(logits if states is None else {"logits": logits, "states": states}, temporary)
        temporary.replace(path)
        self.teacher_pass_s[name] = round(time.perf_counter() - started, 3)
        return logits, states

    def baseline(self, model: nn.Module, datamodule: Any) -> tuple[nn.Module, Any, str]:
        """The model being compressed is the teacher: the ledger compares the student with it."""
        return self.teacher, self.teacher_data, "teacher"

    def facts(self) -> dict[str, Any]:
        return {
            "teacher": "untrained copy (fast_dev_run)" if self.untrained else str(self.teacher_dir.absolute()),
            "teacher_params": sum(p.numel() for p in self.teacher.parameters()) if self.teacher else None,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "cached_teacher_logits": self.cache,
            **({"transfer_set": self.transfer_set} if self.transfer_set else {}),
            **({"teacher_pass_s": self.teacher_pass_s} if self.teacher_pass_s else {}),
            **({"hidden": self.hidden.facts()} if self.hidden else {}),
        }


def teacher_checkpoint(run_dir: Path) -> Path:
    from trimlab.transfer import pretrained_checkpoint

    return pretrained_checkpoint(run_dir)[0]


def untrained_copy(model: nn.Module) -> nn.Module:
    """The model with fresh weights: a teacher that exercises every step of distillation and teaches nothing."""
    copy = deepcopy(model)
    for module in copy.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return copy


def load_teacher(run_dir: Path) -> tuple[nn.Module, Any]:
    """The teacher's backbone with its tested weights, and its DataModule (its own tokenizer, from its run dir)."""
    from trimlab.checkpoints import load_weights
    from trimlab.factory import build, load_run

    cfg, _ = load_run(run_dir)
    datamodule, task = build(cfg, artifacts_from=run_dir)
    load_weights(task, teacher_checkpoint(run_dir))
    return task.backbone.eval(), datamodule
