"""An optuna sweeper for Hydra that survives failed trials and resumes a killed sweep.

Why not hydra-optuna-sweeper: it pins optuna 2.10 (whose SQLite storage breaks under SQLAlchemy 2) and aborts
the whole sweep when one trial raises. Here:
- the study lives in `<sweep dir>/optuna.db`; re-running the same command opens it again and runs only the
  trials still missing (`n_trials` counts finished ones), never one that repeats a completed trial (resume.py);
- Ctrl-C (SIGINT) or SIGTERM records the running trial as interrupted (failed in optuna, `interrupted` in
  sweep_summary) and exits 130 / 143 with one line saying how to resume; the re-run runs that configuration
  again first (so does a kill, found on the re-run as a trial still marked running);
- a job that fails (trimlab records it as failed in its summary) is told to optuna as a failed trial, and the
  sweep goes on;
- one objective or several (`direction: [maximize, minimize]`): the job returns one value per direction;
- `within`: the cheapest model whose val accuracy stays within tolerance of a baseline (constrained.py).
Search space syntax is Hydra's, as in hydra-optuna-sweeper: `choice(a,b)`, `range(1,5)`, `interval(0,1)`,
`tag(log, interval(1e-4,1e-1))`. A group's option's knob (`compression.prune.sparsity` beside `compression`) is
sampled only in trials that pick that option (space.py).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.trimlab_sweeper import resume
from hydra_plugins.trimlab_sweeper.constrained import Within

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


def sampler(name: str, seed: int | None, space: dict[str, Any]):
    """TPE and NSGA-II model a trial's constraints (`Trial.set_constraint`), random and grid ignore them."""
    import optuna

    if name == "tpe":  # group: the conditional knobs (space.py)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
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


def signal_name(exit_code: int) -> str:
    """SIGINT for 130: a process stopped by signal N exits 128 + N."""
    try:
        return signal.Signals(exit_code - 128).name
    except ValueError:
        return f"signal {exit_code - 128}"


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
        within: Any = None,
    ) -> None:
        self.study_name, self.sampler_name, self.seed = study_name, sampler, seed
        directions = OmegaConf.to_container(direction) if OmegaConf.is_config(direction) else direction
        self.directions = [directions] if isinstance(directions, str) else list(directions)
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.within = Within.of(within)
        if self.within and len(self.directions) != 1:
            from trimlab.errors import fail

            fail("hydra.sweeper.within needs one objective (the cost); set one optimized_metric and one direction")

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

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.study_name, storage=f"sqlite:///{sweep_dir.absolute() / 'optuna.db'}",
            sampler=sampler(self.sampler_name, self.seed, space), directions=self.directions,
            load_if_exists=True,
        )  # fmt: skip
        resume.settle_killed(study, sweep_dir, self.config, self.within)
        if study.trials:  # resumed: a sampler seeded as the first run would propose the same trials again
            seed = resume.resumed_seed(self.seed, len(study.trials))
            study.sampler = sampler(self.sampler_name, seed, space)
        if self.within:
            self.within.enqueue_baseline(study, space)
        return study

    def finished(self, study) -> int:
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        return sum(1 for t in study.get_trials(deepcopy=False, states=done) if resume.counted(t))

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = self.split(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = self.open_study(sweep_dir, space)
        if self.finished(study):
            log.info("resuming study %s: %d of %d trials already finished", self.study_name, self.finished(study),
                     self.n_trials)  # fmt: skip
        previous = self.catch_signals()
        try:
            self.run_trials(study, space, fixed, sweep_dir)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.report(study, sweep_dir)

    def run_trials(self, study, space: dict[str, Any], fixed: list[str], sweep_dir: Path) -> None:
        """Ask, launch and tell until n_trials are finished; a signal records the trials it cut short and stops."""
        pending: list[tuple[int, Any]] = []  # (job number, trial) of the trials launched and not yet told
        try:
            while (remaining := self.n_trials - self.finished(study)) > 0 and not self.stalled(study):
                # The baseline runs alone: every other trial's constraint is read against its result.
                at_once = 1 if self.within and self.within.baseline_value(study) is None else self.n_jobs
                trials = [t for _ in range(min(at_once, remaining)) if (t := resume.ask_new(study, space))]
                if not trials:
                    return
                # Job numbers follow trial numbers, so run dir `3_<id>` is trial 3.
                pending = list(enumerate(trials, start=trials[0].number))
                batch = [fixed + [f"{key}={value}" for key, value in trial.params.items()] for trial in trials]
                for result in self.launcher.launch(batch, initial_job_idx=trials[0].number):
                    if result.status.name == "FAILED" and self.interruption(result._return_value):
                        raise result._return_value
                    trial, (values, state) = pending.pop(0)[1], self.outcome(result)
                    if self.within and state.name == "COMPLETE":
                        self.within.record(study, trial, Path(result.hydra_cfg.hydra.runtime.output_dir))
                    resume.tell(study, trial, values, state)
                if self.within:
                    self.within.check_baseline(study)
        except BaseException as err:
            stop = self.interruption(err)
            if stop is None:
                raise
            self.stop(study, sweep_dir, pending, *stop)

    def stalled(self, study) -> bool:
        if self.within is None:
            return False
        if self.within.stalled(self.counted(study), self.directions[0] == "maximize"):
            log.info("no cheaper feasible model in the last %d trials: the search stops", self.within.patience)
            return True
        return False

    def counted(self, study) -> list:
        finished = ("COMPLETE", "FAIL", "PRUNED")
        return [t for t in study.get_trials(deepcopy=False) if t.state.name in finished and resume.counted(t)]

    def catch_signals(self) -> dict[int, Any]:
        """While trials run, SIGINT and SIGTERM raise KeyboardInterrupt and the signal's name is kept: Lightning
        turns a KeyboardInterrupt inside fit into sys.exit(1), and the exit code must still say which it was."""
        self.received: str | None = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, frame: Any) -> None:
            self.received = signal.Signals(signum).name
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the bookkeeping short
            raise KeyboardInterrupt

        return {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}

    def interruption(self, err: BaseException) -> tuple[str, int] | None:
        """(signal name, exit code) when `err` means a signal stops the sweep: trimlab's Interrupted from a job
        (its exit_code is 128 + the signal), a job's SystemExit with such a code, a KeyboardInterrupt, or the
        SystemExit(1) Lightning raises after catching a KeyboardInterrupt inside fit."""
        from trimlab.errors import TrimlabError

        code = getattr(err, "exit_code", None) if isinstance(err, TrimlabError) else None
        if isinstance(err, SystemExit):
            code = err.code if isinstance(err.code, int) and err.code > 128 else None
        if isinstance(err, KeyboardInterrupt) or isinstance(err, SystemExit) and code is None and self.received:
            code = 128 + signal.Signals[self.received or "SIGINT"].value
        if not isinstance(code, int) or code <= 128:
            return None
        name = getattr(err, "signal_name", None) or signal_name(code)
        return str(name), code

    def stop(self, study, sweep_dir: Path, pending: list[tuple[int, Any]], name: str, code: int) -> None:
        """Record the trials a signal cut short as interrupted (a job that had completed keeps its result), then
        exit with one line saying how to resume."""
        from trimlab.errors import fail
        from trimlab.sweep import started_jobs

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the bookkeeping short
        reason = f"interrupted by {name}"
        cut = []
        for job, trial in pending:
            job_dir = started_jobs.get(job)
            if not resume.settle(study, trial, job_dir, sweep_dir, reason, self.config, self.within):
                cut.append(f"trial {trial.number}" + (f" ({job_dir})" if job_dir else ""))
        self.report(study, sweep_dir)
        where = f" in {', '.join(cut)}" if cut else " between trials"
        again = ", the interrupted trial's configuration runs again" if cut else ""
        fail(f"sweep {reason}{where}; resume it by running the same command again: finished trials are kept{again}",
             code=code)  # fmt: skip

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
        trials = study.trials
        completed = [t for t in trials if t.state.name == "COMPLETE" and resume.counted(t)]
        best = study.best_trials if len(self.directions) > 1 else ([study.best_trial] if completed else [])
        best = [] if self.within else best  # with a constraint: the cheapest feasible trial, named below
        # A repeat answered from an earlier trial's result has no run of its own: name the trial that ran.
        ran = {t.number: t for t in (trials[t.system_attrs.get("duplicate_of", t.number)] for t in best)}
        best = sorted(ran.values(), key=lambda t: t.number)
        lines = {"study": self.study_name, "directions": self.directions, "trials": len(study.trials),
                 "completed": len(completed),
                 "best": [{"number": t.number, "values": t.values, "params": t.params} for t in best]}  # fmt: skip
        if self.within:
            lines["within"] = self.within.summary(self.counted(study), self.directions[0] == "maximize")
            self.within.announce(lines["within"]["winner"], str(self.config.optimized_metric))
        OmegaConf.save(OmegaConf.create(lines), sweep_dir / "optimization_results.yaml")
        for trial in best:
            log.info("best trial %d: %s with %s", trial.number, trial.values, trial.params)
