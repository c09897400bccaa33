"""What keeps a run's record true when the run does not end well: a signal, a diverging loss, a full disk.

- `catch_signals`: SIGTERM (a scheduler's pre-emption, `timeout`) and SIGINT (Ctrl-C) raise `SignalReceived` in
  the main thread, so the pipeline can mark the run `interrupted` and exit 143/130 instead of Lightning's exit 0
  (SIGTERM) or exit 1 (SIGINT). A second signal while the run is being recorded is ignored.
- `StopOnDivergence`: a NaN/inf loss stops the fit before its backward pass, so no checkpoint holds NaN weights.
- `AtomicCheckpointIO`: a checkpoint is written to a temp file beside it, then renamed: a full disk or a kill
  mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from trimlab import rundir
from trimlab.errors import Interrupted, TrimlabError

SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class SignalReceived(BaseException):
    """Raised by the handler; a BaseException (like KeyboardInterrupt) so library `except Exception` passes it."""

    def __init__(self, signum: int) -> None:
        super().__init__(SIGNALS.get(signum, str(signum)))
        self.signum = signum
        self.name = SIGNALS.get(signum, str(signum))
        self.exit_code = 128 + int(signum)


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """SIGTERM/SIGINT raise `SignalReceived` once while the block runs; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:  # the run is already being recorded as interrupted: let that finish
            return
        received.append(signum)
        raise SignalReceived(signum)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Diverged(TrimlabError):
    """The training loss became NaN or inf."""


class StopOnDivergence(pl.Callback):
    """Stop at the first non-finite loss, before backward: the weights (and every checkpoint) stay finite.

    Under DDP the decision is shared, so every rank stops at the same step instead of one waiting forever."""

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            value = "nan" if torch.isnan(loss.detach()).any() else "inf"
            raise Diverged(
                f"loss became {value} at step {trainer.global_step} (epoch {trainer.current_epoch}); lower "
                "task.optimizer.lr or set trainer.gradient_clip_val"
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the checkpoint's dir, fsync, then rename over the old file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def disk_full(err: BaseException) -> bool:
    """Whether an error (or one it was raised from) is ENOSPC: torch.save wraps it in a RuntimeError. The chain
    is walked once per error: an error re-raised from its own wrapper (`factory.make`) links back to it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def recorded_failure(err: BaseException, summary: dict, trainer: pl.Trainer | None, run_dir: Path) -> BaseException:
    """The summary's record of how the run ended, and the error to raise: a signal and a full disk become one
    clear line; anything else is raised as it is."""
    if isinstance(err, SignalReceived):
        message = interrupted_message(err.name, trainer, run_dir)
        summary.update(status="interrupted", signal=err.name, error=message)
        return Interrupted(message, err.exit_code)
    summary.update(status="failed", error=f"{type(err).__name__}: {err}")
    if disk_full(err):
        summary["error"] = disk_full_message(err, run_dir)
        return TrimlabError(summary["error"])
    return err


def interrupted_message(signal_name: str, trainer: pl.Trainer | None, run_dir: Path) -> str:
    epoch, step = (trainer.current_epoch, trainer.global_step) if trainer is not None else (0, 0)
    where = f"interrupted by {signal_name} at epoch {epoch}, step {step}"
    if rundir.sweep_name():  # a sweep job: the sweep says how to resume the sweep
        return where
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return f"{where}, before its first checkpoint; start the run again"
    return f"{where}; resume with ckpt_path=last hydra.run.dir={run_dir.absolute()}"


def disk_full_message(err: BaseException, run_dir: Path) -> str:
    return (
        f"no space left on device while writing {run_dir.absolute()}; the last good checkpoint is kept: free space "
        f"(or move the run), then resume with ckpt_path=last hydra.run.dir={run_dir.absolute()}"
    )
