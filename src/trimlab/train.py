"""trimlab-train: train, test, measure and report one classifier (or a sweep of them with -m)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from trimlab import rundir
from trimlab.cli import config_dir, preflight
from trimlab.errors import TrimlabError, fail, full_errors

log = logging.getLogger("trimlab")
failed_jobs: list[str] = []


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def run(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        from trimlab.pipeline import train

        train(cfg, run_dir, rundir.current_run_id(), overrides=list(hydra_cfg.overrides.task))
    except Exception as err:
        sweep = hydra_cfg.mode == RunMode.MULTIRUN
        if full_errors() or not (sweep or isinstance(err, TrimlabError)):
            raise  # a bug, outside a sweep: keep its traceback
        if not sweep:
            fail(str(err))
        # One failed job never stops the sweep; its summary says why, the log has the traceback.
        log.error("job %s failed: %s", run_dir, err, exc_info=not isinstance(err, TrimlabError))
        failed_jobs.append(str(run_dir))
    finally:
        rundir.set_run_id(None)  # the next sweep job gets its own id


def main() -> None:
    rundir.register_resolvers()
    sys.argv = [sys.argv[0], *preflight(sys.argv[1:], "train")]
    run()
    if failed_jobs:
        fail(f"{len(failed_jobs)} sweep job(s) failed: {', '.join(failed_jobs)}")


if __name__ == "__main__":
    main()
