"""`ckpt_path=` on the command line: resume a run in its own dir, or start a new run from another run's checkpoint.

A finished run is never overwritten: its dir is only read when a new run starts from one of its checkpoints, and a
dir that already holds a run's summary is refused unless the command resumes that very run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trimlab import rundir
from trimlab.errors import ConfigError

DROPPED = ("ckpt_path=", "hydra.run.dir=")


def resume_command(
    cfg: DictConfig, argv: list[str], overrides: list[str], multirun: bool, printing_cfg: bool
) -> tuple[list[str], list[str]] | None:
    """For `ckpt_path=`: the command line (argv, overrides) that resumes the run in its own dir, or that starts a
    new run from another run's checkpoint with that run's overrides; None when the command runs as given."""
    if multirun and cfg.get("ckpt_path") == "last":
        raise ConfigError("ckpt_path=last resumes one run; drop -m, or give each job its own ckpt_path=<file>")
    if multirun or not cfg.get("ckpt_path") or printing_cfg:
        return None
    resumed = resume_overrides(cfg, overrides)
    if resumed == overrides:
        return None
    flags = [a for a in argv if a not in overrides]
    return [*flags, *resumed], resumed


def resume_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The overrides to run: for a checkpoint of a trimlab run, that run's saved overrides, then the user's."""
    explicit_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    checkpoint, source = _checkpoint_and_source(cfg, explicit_dir)
    saved = source / ".hydra" / "overrides.yaml"
    if not (checkpoint.parent.name == "checkpoints" and saved.is_file()):
        return overrides  # a checkpoint from elsewhere: a new run starts from its state
    previous = [str(o) for o in OmegaConf.load(saved) if not str(o).startswith(DROPPED)]
    mine = [o for o in overrides if not o.startswith(DROPPED)]
    forked = str(cfg.ckpt_path) != "last" and (
        explicit_dir is not None and Path(explicit_dir).absolute() != source.absolute() or rundir.finished(source)
    )
    if forked:  # a new run, in the dir the user named (or a fresh one), from the other run's checkpoint
        named_dir = [f"hydra.run.dir={explicit_dir}"] if explicit_dir else []
        return [*previous, *mine, f"ckpt_path={checkpoint.absolute()}", *named_dir]
    rundir.set_run_id(saved_run_id(source))
    # The run keeps its .hydra/ as first written: what it was started with, and what the next resume replays.
    resume = [f"ckpt_path={checkpoint.absolute()}", f"hydra.run.dir={source.absolute()}", "hydra.output_subdir=null"]
    return [*previous, *mine, *resume]


def _checkpoint_and_source(cfg: DictConfig, explicit_dir: str | None) -> tuple[Path, Path]:
    """The checkpoint file and the run dir it belongs to (for a file outside any run: the dir above its dir)."""
    if str(cfg.ckpt_path) != "last":
        checkpoint = Path(str(cfg.ckpt_path))
        if not checkpoint.is_file():
            raise ConfigError(f"ckpt_path: {checkpoint} does not exist; pass an existing checkpoint file")
        return checkpoint, checkpoint.absolute().parents[1]
    if explicit_dir:
        run_dir = Path(explicit_dir)
        if rundir.finished(run_dir):
            raise ConfigError(
                f"ckpt_path=last: {run_dir} holds a completed run, nothing to resume; start a new run in another dir"
            )
    else:
        task_dir = Path(cfg.paths.output_root) / cfg.task_name
        run_dir = rundir.latest_run_dir(task_dir)
        if run_dir is None:
            raise ConfigError(
                f"ckpt_path=last: no unfinished run with checkpoints/last.ckpt under {task_dir}; "
                "name the run with hydra.run.dir=<run dir> or pass ckpt_path=<file>"
            )
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise ConfigError(f"ckpt_path=last: {checkpoint} does not exist; pass an existing checkpoint file")
    return checkpoint, run_dir


def saved_run_id(run_dir: Path) -> str:
    summary = read_summary(run_dir)
    return summary.get("run_id") or rundir.run_id_from_dir(run_dir) or rundir.current_run_id()


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def check_not_another_run(cfg: DictConfig) -> None:
    """A dir holding a run's summary is used only to resume that run (the checkpoint is one of its own)."""
    run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    if not (run_dir / "summary.json").is_file() or _launched_rank():
        return
    ckpt = cfg.get("ckpt_path")
    if ckpt and Path(str(ckpt)).absolute().parents[1] == run_dir.absolute():
        return
    summary = read_summary(run_dir)
    raise ConfigError(
        f"{run_dir} already holds run {summary.get('run_id', '?')} ({summary.get('status', 'unreadable summary')}); "
        "choose another dir, or resume it with ckpt_path=last"
    )


def _launched_rank() -> bool:
    """Ranks > 0 of a DDP run (and other nodes) re-run the command with the run dir rank 0 already wrote: started
    by Lightning (LOCAL_RANK, NODE_RANK), torchrun (RANK) or srun (SLURM_PROCID)."""
    return any(os.environ.get(name, "0") != "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def source_run_dir(cfg: DictConfig, run_dir: Path) -> Path | None:
    """Where a resumed run's data artifacts (a tokenizer) come from: the run its checkpoint belongs to."""
    if not cfg.get("ckpt_path"):
        return None
    source = Path(cfg.ckpt_path).absolute().parents[1]
    return source if (source / ".hydra").is_dir() else run_dir
