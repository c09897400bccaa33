"""An optuna sweeper for Hydra that survives failed trials and resumes a killed sweep.

Why not hydra-optuna-sweeper: it pins optuna 2.10 (whose SQLite storage breaks under SQLAlchemy 2) and aborts
the whole sweep when one trial raises. Here:
- the study lives in `<sweep dir>/optuna.db`; re-running the same command opens it again, marks trials a kill
  interrupted as failed, and runs only the trials still missing (`n_trials` counts finished ones);
- a job that fails (trimlab records it as failed in its summary) is told to optuna as a failed trial, and the
  sweep goes on;
- one objective or several (`direction: [maximize, minimize]`): the job returns one value per direction.
Search space syntax is Hydra's, as in hydra-optuna-sweeper: `choice(a,b)`, `range(1,5)`, `interval(0,1)`,
`tag(log, interval(1e-4,1e-1))`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def distribution(override: Override) -> Any:
    import optuna.distributions as dist

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return dist.CategoricalDistribution(
            [str(v) if not isinstance(v, int | float | bool) else v for v in value.list]
        )
    if isinstance(value, RangeSweep):
        return dist.IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step or 1))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return dist.IntDistribution(value.start, value.end, log=log_scale)
        return dist.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.key_or_group}: use choice(), range(), interval() or tag(log, interval())")


def sampler(name: str, seed: int | None, space: dict[str, Any], multi_objective: bool):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "grid":
        values = {k: list(d.choices) for k, d in space.items() if hasattr(d, "choices")}
        if len(values) != len(space):
            raise ValueError("sampler=grid needs every parameter as choice(...)")
        return optuna.samplers.GridSampler(values, seed=seed)
    raise ValueError(f"hydra.sweeper.sampler={name!r}: use tpe, random, grid or nsga2")


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str = "sweep",
        sampler: str = "tpe",
        direction: str | list[str] = "maximize",
        n_trials: int = 20,
        n_jobs: int = 1,
        seed: int | None = 42,
        params: dict[str, str] | None = None,
    ) -> None:
        self.study_name, self.sampler_name, self.seed = study_name, sampler, seed
        directions = OmegaConf.to_container(direction) if OmegaConf.is_config(direction) else direction
        self.directions = [directions] if isinstance(directions, str) else list(directions)
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.params = dict(params or {})
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def split(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Search space (from `params` and sweep overrides on the command line) and fixed overrides."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = {}, []
        for override in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments)):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution(override)
            else:
                fixed.append(override.input_line)
        return space, fixed

    def open_study(self, sweep_dir: Path, space: dict[str, Any]):
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.study_name, storage=f"sqlite:///{sweep_dir.absolute() / 'optuna.db'}",
            sampler=sampler(self.sampler_name, self.seed, space, len(self.directions) > 1),
            directions=self.directions, load_if_exists=True,
        )  # fmt: skip
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_system_attr(trial._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            log.warning("trial %d was interrupted by a kill: recorded as failed, run again", trial.number)
        return study

    def finished(self, study) -> int:
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        return sum(1 for t in study.get_trials(deepcopy=False, states=done) if not t.system_attrs.get("interrupted"))

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = self.split(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = self.open_study(sweep_dir, space)
        if self.finished(study):
            log.info("resuming study %s: %d of %d trials already finished", self.study_name, self.finished(study),
                     self.n_trials)  # fmt: skip
        while (remaining := self.n_trials - self.finished(study)) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            batch = [fixed + [f"{key}={value}" for key, value in trial.params.items()] for trial in trials]
            results = self.launcher.launch(batch, initial_job_idx=len(study.trials) - len(trials))
            for trial, result in zip(trials, results, strict=True):
                study.tell(trial, *self.outcome(result))
        self.report(study, sweep_dir)

    def outcome(self, result: Any) -> tuple[Any, Any]:
        """(values, state): a failed job, or one that returned no usable value, is a failed trial."""
        from optuna.trial import TrialState

        try:
            value = result.return_value
        except Exception:  # noqa: BLE001 - the job raised: a failed trial, the sweep goes on
            return None, TrialState.FAIL
        values = list(value) if isinstance(value, list | tuple) else [value]
        if len(values) != len(self.directions) or any(v is None or math.isnan(float(v)) for v in values):
            return None, TrialState.FAIL
        return (values if len(values) > 1 else values[0]), TrialState.COMPLETE

    def report(self, study, sweep_dir: Path) -> None:
        completed = [t for t in study.trials if t.state.name == "COMPLETE"]
        best = study.best_trials if len(self.directions) > 1 else ([study.best_trial] if completed else [])
        lines = {"study": self.study_name, "directions": self.directions, "trials": len(study.trials),
                 "completed": len(completed),
                 "best": [{"number": t.number, "values": t.values, "params": t.params} for t in best]}  # fmt: skip
        OmegaConf.save(OmegaConf.create(lines), sweep_dir / "optimization_results.yaml")
        for trial in best:
            log.info("best trial %d: %s with %s", trial.number, trial.values, trial.params)
