"""trimlab-train: train, test, measure and report one classifier (or a sweep of them with -m)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trimlab import rundir
from trimlab.errors import Interrupted, TrimlabError, fail, full_errors, user_errors
from trimlab.launch import config_dir, launch
from trimlab.processes import multi_process

log = logging.getLogger("trimlab")
failed_jobs: list[str] = []
SWEEP_JOB_DIR = "TRIMLAB_SWEEP_JOB_DIR"  # set for a sweep job run as a fresh process: its run dir


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def run(cfg: DictConfig) -> float | list[float] | None:
    """One job; returns the `optimized_metric` value(s) to a sweeper (None when the job failed)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    # A signal stops the whole command; in a sweep the sweeper records the trial interrupted and says how to
    # resume the sweep, so errors pass through to it.
    with nullcontext() if sweep else user_errors():
        try:
            return job(cfg, hydra_cfg, run_dir)
        except Exception as err:
            if full_errors() or not sweep or isinstance(err, Interrupted):
                raise  # outside a sweep: a user error becomes one line, a bug keeps its traceback
            # One failed job never stops the sweep; its summary says why, the log has the traceback.
            log.error("job %s failed: %s", run_dir, err, exc_info=not isinstance(err, TrimlabError))
            failed_jobs.append(str(run_dir))
            return None
        finally:
            rundir.set_run_id(None)  # the next sweep job gets its own id
            rundir.set_sweep_name(None)


def job(cfg: DictConfig, hydra_cfg, run_dir: Path) -> float | list[float] | None:
    """The job itself, errors left to `run`: a multi-process sweep job in a fresh process, else the pipeline."""
    if hydra_cfg.mode == RunMode.MULTIRUN and relaunches_script(cfg):
        run_job_in_fresh_process(run_dir)
        return None
    share_cores(hydra_cfg)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # sweep jobs share a W&B group named after the sweep
        rundir.set_sweep_name(Path(hydra_cfg.sweep.dir).name)
    from trimlab.pipeline import train
    from trimlab.sweep import objective

    # Ranks > 0 of a DDP run are this command re-run with the same run dir: the dir names the id.
    run_id = rundir.run_id_from_dir(run_dir) or rundir.current_run_id()
    overrides = list(hydra_cfg.overrides.task) or fresh_job_overrides(run_dir)
    return objective(cfg, train(cfg, run_dir, run_id, overrides=overrides))


def fresh_job_overrides(run_dir: Path) -> list[str]:
    """A sweep job run as a fresh process starts from its saved config, with no overrides on its command line:
    its own are those the sweep saved for it."""
    if os.environ.get(SWEEP_JOB_DIR) != str(run_dir.absolute()):
        return []
    return [str(override) for override in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]


def share_cores(hydra_cfg) -> None:
    """Jobs a launcher runs side by side (joblib's n_jobs) split the cores: N jobs x all cores would oversubscribe
    them (on 2 cores, two 2-thread jobs run several times slower than one after the other)."""
    n_jobs = int(hydra_cfg.launcher.get("n_jobs") or 1) if hydra_cfg.mode == RunMode.MULTIRUN else 1
    if n_jobs < 0:  # joblib's convention (hydra/launcher=joblib defaults to -1): all cores + 1 + n_jobs
        n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    if n_jobs > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_jobs))


def relaunches_script(cfg: DictConfig) -> bool:
    """Whether Lightning would start the other ranks by re-running this command (DDP/FSDP with popen).

    Inside a sweep that re-run would repeat the whole sweep in every child (Lightning #15737)."""
    trainer = cfg.trainer
    strategy = trainer.get("strategy")
    start_method = strategy.get("start_method", "popen") if isinstance(strategy, DictConfig) else "popen"
    if isinstance(strategy, str) and "spawn" in strategy or start_method != "popen":
        return False
    return multi_process(cfg)


def run_job_in_fresh_process(run_dir: Path) -> None:
    """Run one sweep job as a new `trimlab-train` from the config Hydra saved for it (as NeMo's launcher does):
    its DDP ranks then re-run that single job, not the sweep."""
    command = [
        sys.executable, "-m", "trimlab.train",
        "--config-path", str((run_dir / ".hydra").absolute()), "--config-name", "config",
        f"hydra.run.dir={run_dir.absolute()}", "hydra.output_subdir=null",
    ]  # fmt: skip
    log.info("running %s as a fresh process (multi-process job inside a sweep)", run_dir)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # its own W&B service, as from a shell
    env[SWEEP_JOB_DIR] = str(run_dir.absolute())
    code = subprocess.run(command, check=False, env=env).returncode
    if code != 0:
        raise TrimlabError(f"job process exited with {code}; see {run_dir / 'summary.json'} and its log")


def main() -> None:
    from trimlab.sweep import failed_in_sweep

    launch(run, "train")
    # Jobs in this process report themselves; jobs in launcher workers are counted from the sweep summary.
    failed = failed_in_sweep or failed_jobs
    if failed:
        fail(f"{len(failed)} sweep job(s) failed: {', '.join(failed)}; see sweep_summary.json in the sweep dir")


if __name__ == "__main__":
    main()
