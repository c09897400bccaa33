"""Lightning's multi-process strategies with a bounded wait for peers.

torch waits 30 minutes for every process of a run to reach the rendezvous store (MASTER_ADDR:MASTER_PORT), and
Lightning's default cluster environment waits there however many nodes never start: a run with
`trainer.num_nodes=2` and no second node looks like a hang. These subclasses take `timeout` in seconds (the
strategy configs set it; torch also uses it as the longest wait for the other ranks at a collective) and turn
torch's timeout into one `PeerTimeoutError` line that says what to start. Class names stay Lightning's, so
summaries and config checks read them as before.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from lightning.pytorch import strategies
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal
from torch.multiprocessing.spawn import ProcessRaisedException

from trimlab.errors import TrimlabError

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_KEY = "trainer.strategy.timeout"


class PeerTimeoutError(TrimlabError):
    """The other processes of a multi-process run did not join within the strategy's timeout."""


def as_timedelta(timeout: float | timedelta | None) -> timedelta:
    """Seconds (what a config holds) or a timedelta (what Lightning takes); None is the default."""
    if timeout is None:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    if isinstance(timeout, timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise TrimlabError(f"{TIMEOUT_KEY}={timeout!r} must be a positive number of seconds, e.g. 300")
    return timedelta(seconds=timeout)


def peer_timeout_message(strategy: Any, err: Exception) -> str:
    """What joined, where, and what to start; `strategy` has run `set_world_ranks`."""
    seconds = f"{strategy._timeout.total_seconds():g}"
    where = f"MASTER_ADDR={os.environ.get('MASTER_ADDR', '?')} MASTER_PORT={os.environ.get('MASTER_PORT', '?')}"
    joined = re.search(r"(\d+)/(\d+) clients joined", str(err))
    if joined:
        seen = f"{joined[1]} of {joined[2]} processes reached {where}"
    else:  # a rank that found no store, or lost it when rank 0 gave up waiting
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        seen = f"rank {strategy.global_rank} of {strategy.world_size} waited at {where} ({reason})"
    return (
        f"no peer joined within {seconds} s: {seen} (trainer.num_nodes={strategy.num_nodes} x "
        f"trainer.devices={strategy.num_processes}, NODE_RANK={strategy.node_rank}); start the same command on "
        "every node with its own NODE_RANK and the same MASTER_ADDR and MASTER_PORT (or launch with torchrun or "
        f"srun), or set trainer.num_nodes=1; {TIMEOUT_KEY}=<seconds> sets how long to wait"
    )


class BoundedRendezvous:
    """Mixin for a Lightning strategy: `timeout` in seconds, and a timeout at the rendezvous as one clear error."""

    def __init__(self, *args: Any, timeout: float | timedelta | None = DEFAULT_TIMEOUT_S, **kwargs: Any) -> None:
        super().__init__(*args, timeout=as_timedelta(timeout), **kwargs)

    def setup_environment(self) -> None:
        try:
            super().setup_environment()
        except (dist.DistStoreError, dist.DistNetworkError) as err:  # joining: the store timed out or went away
            # Lightning leaves the ranks this process started running on other errors: they would wait again.
            if isinstance(self._launcher, _SubprocessScriptLauncher):
                self._launcher.kill(_get_sigkill_signal())
            raise PeerTimeoutError(peer_timeout_message(self, err)) from err


def worker_error(err: ProcessRaisedException) -> str | None:
    """A spawned worker's `PeerTimeoutError` message from the traceback text torch hands back, else None."""
    prefix = f"{PeerTimeoutError.__module__}.{PeerTimeoutError.__qualname__}: "
    lines = [line for line in str(err).splitlines() if line.startswith(prefix)]
    return lines[-1].removeprefix(prefix) if lines else None


class SpawnLauncher(_MultiProcessingLauncher):
    """Spawned workers raise in their own process; the main process gets their traceback as text."""

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        try:
            return super().launch(function, *args, trainer=trainer, **kwargs)
        except ProcessRaisedException as err:
            message = worker_error(err)
            if message is None:
                raise
            raise PeerTimeoutError(message) from err


class DDPStrategy(BoundedRendezvous, strategies.DDPStrategy):
    """Lightning's DDP (popen or spawn)."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _MultiProcessingLauncher):
            self._launcher = SpawnLauncher(self, start_method=self._start_method)


class FSDPStrategy(BoundedRendezvous, strategies.FSDPStrategy):
    """Lightning's FSDP (GPUs)."""


class ModelParallelStrategy(BoundedRendezvous, strategies.ModelParallelStrategy):
    """Lightning's FSDP2 / tensor parallel strategy."""
