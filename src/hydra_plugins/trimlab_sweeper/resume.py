"""What a re-run of a sweep does with the study it finds in `optuna.db`.

- An interrupted trial (Ctrl-C, SIGTERM, a kill) is recorded as failed with the reason in its system attrs
  (`interrupted`) and its configuration is queued to run once more, first: an interruption says nothing about
  the configuration, so it is neither skipped nor counted as finished. A trial whose job had completed before
  the cut keeps its result, read from its run dir.
- The sampler of a resumed study is seeded from (seed, trials already in the study): with the seed alone a
  re-run replays the sampler's sequence from the start and re-runs the configurations already tried.
- A proposal that repeats a completed trial is not run: it is answered with that trial's values (`duplicate_of`),
  not counted towards n_trials, and the sampler asked again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ASKS_PER_TRIAL = 20  # proposals tried before a search space with nothing new left is given up on


def resumed_seed(seed: int | None, trials_so_far: int) -> int | None:
    """A fresh sweep keeps `seed` (reproducible); a resumed one continues with a seed of its own."""
    if seed is None or trials_so_far == 0:
        return seed
    return seed + 1_000_003 * trials_so_far


def params_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def tell(study, trial, values: Any = None, state: Any = None) -> None:
    """study.tell, where the grid sampler's `study.stop()` after the last grid point (which optuna allows only
    inside study.optimize) does not end the sweep: the trial is already stored."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def mark_interrupted(study, trial_id: int, number: int, params: dict[str, Any], reason: str) -> None:
    """Record a trial cut short as failed (with why) and queue its configuration to run again."""
    from optuna.trial import TrialState

    baseline = study._storage.get_trial(trial_id).user_attrs.get("baseline")  # a constrained search's reference
    study._storage.set_trial_system_attr(trial_id, "interrupted", reason)
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": number, **({"baseline": True} if baseline else {})})
    log.warning("trial %d was interrupted (%s): recorded as failed, its configuration runs again", number, reason)


def settle(study, trial, job_dir: Path | None, sweep_dir: Path, reason: str, config: Any, within: Any) -> bool:
    """Tell a trial that a signal or a kill cut short. A job that had completed keeps its result: the cut may land
    after the job wrote its summary and before the sweeper told the study. Any other is interrupted and its
    configuration queued again. True when the job had completed."""
    from optuna.trial import TrialState

    from trimlab.sweep import mark_interrupted as mark_job
    from trimlab.sweep import objective

    summary = mark_job(sweep_dir, job_dir, reason) if job_dir else {}
    if summary.get("status") != "completed":
        mark_interrupted(study, trial._trial_id, trial.number, trial.params, reason)
        return False
    values = objective(config, summary)
    if within and values is not None:
        within.record(study, trial, job_dir)
    tell(study, trial, values, TrialState.COMPLETE if values is not None else TrialState.FAIL)
    return True


def settle_killed(study, sweep_dir: Path, config: Any, within: Any) -> None:
    """Trials a kill left running (nothing told their end), settled from their run dirs (`<trial number>_<id>`)."""
    from optuna.trial import Trial, TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        job_dir = next(iter(sorted(sweep_dir.glob(f"{frozen.number}_*"))), None)
        settle(study, Trial(study, frozen._trial_id), job_dir, sweep_dir, "killed", config, within)


def counted(trial) -> bool:
    """Whether a finished trial counts towards n_trials: not an interrupted one, nor a skipped duplicate."""
    return not (trial.system_attrs.get("interrupted") or "duplicate_of" in trial.system_attrs)


def ask_new(study, space: dict[str, Any]):
    """A trial whose configuration no completed trial had (its parameters sampled define-by-run: space.py); None
    when the sampler keeps proposing only those."""
    from optuna.trial import TrialState

    from hydra_plugins.trimlab_sweeper.constrained import ATTRS
    from hydra_plugins.trimlab_sweeper.space import sample

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    completed = {params_key(t.params): t for t in done}
    for _ in range(ASKS_PER_TRIAL):
        trial = study.ask()
        twin = completed.get(params_key(sample(trial, space)))
        if twin is None:
            return trial
        # Answered from the earlier result, not run: the sampler learns the value, n_trials does not count it.
        study._storage.set_trial_system_attr(trial._trial_id, "duplicate_of", twin.number)
        for key in ATTRS:  # and a constrained search's metric and feasibility
            if key in twin.user_attrs:
                trial.set_user_attr(key, twin.user_attrs[key])
        for key, value in twin.constraints.items():
            trial.set_constraint(key, value)
        tell(study, trial, twin.values, TrialState.COMPLETE)
        log.info("trial %d repeats completed trial %d: answered from its result, not run", trial.number, twin.number)
    log.warning("the sampler proposed only configurations already completed (%d tries): the search space "
                "looks exhausted, the sweep stops here", ASKS_PER_TRIAL)  # fmt: skip
    return None
