"""`model.compile=true` that pays or says so: after the first epoch, a few training steps of the compiled backbone
are timed against the same backbone run eager, and the run warns once when compiling does not pay."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch

from trimlab.batches import forward

log = logging.getLogger(__name__)
PAYS = 1.2  # compiled steps at least this much faster than eager


class CompileCheck(pl.Callback):
    """Times forward + backward on the first epoch's last batch, compiled then eager, `repeats` times each, with
    the RNG and the batch-norm statistics restored after, so the fit goes on as it would have. The ratio is kept
    for the summary (`cost.compile_speedup`)."""

    def __init__(self, repeats: int = 5) -> None:
        self.repeats, self.speedup, self.batch = int(repeats), None, None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 0:
            self.batch = batch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone = pl_module.backbone
        if self.speedup is not None or self.batch is None or getattr(backbone, "_compiled_call_impl", None) is None:
            return
        compiled_s, eager_s = self.time_steps(backbone, self.batch[0])
        self.speedup = round(eager_s / compiled_s, 3)
        self.batch = None
        if self.speedup < PAYS:
            log.warning("model.compile: a compiled training step takes %.1f ms against %.1f ms eager (%.2fx); "
                        "compiling does not pay for this model here: set model.compile=false",
                        compiled_s * 1e3, eager_s * 1e3, self.speedup)  # fmt: skip

    def time_steps(self, backbone: torch.nn.Module, inputs: Any) -> tuple[float, float]:
        buffers = {name: value.clone() for name, value in backbone.named_buffers()}
        grads = {name: None if p.grad is None else p.grad.clone() for name, p in backbone.named_parameters()}
        compiled_call = backbone._compiled_call_impl
        try:
            with torch.random.fork_rng():
                compiled = self.median_step(backbone, inputs)
                backbone._compiled_call_impl = None  # nn.Module.compile's hook: unset, the module runs eager
                eager = self.median_step(backbone, inputs)
        finally:
            backbone._compiled_call_impl = compiled_call
            with torch.no_grad():
                for name, value in backbone.named_buffers():
                    value.copy_(buffers[name])
            for name, parameter in backbone.named_parameters():
                parameter.grad = grads[name]
        return compiled, eager

    def median_step(self, backbone: torch.nn.Module, inputs: Any) -> float:
        forward(backbone, inputs).float().sum().backward()  # one untimed step: a first eager call warms up too
        timings = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            forward(backbone, inputs).float().sum().backward()
            timings.append(time.perf_counter() - started)
        return statistics.median(timings)
