"""A define-by-run search space: a knob of a config group's option is sampled only when the trial picked it.

A parameter `<group>.<option>.<knob>` (with or without Hydra's `+`/`++` prefix), in a space that also searches
`<group>` itself, is conditional: the trial suggests it only when the value it chose for `<group>` names
`<option>`, alone (`prune`) or in a list (`[prune,quantize_static]`). So

    compression: choice(none, prune, "[prune,quantize_static]")
    ++compression.prune.sparsity: choice(0.5, 0.8)

samples `sparsity` for the trials that prune and for no other: no trial runs a knob of a stage it does not have,
and two trials that differ only in such a knob are the same configuration, which the sweep runs once (resume.py).
"""

from __future__ import annotations

from typing import Any


def bare(key: str) -> str:
    return key.lstrip("+~")


def names(value: Any) -> set[str]:
    """The options a group's value picks: `prune`, or each of `[prune,quantize_static]`."""
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return {part.strip().strip("'\"") for part in text.split(",") if part.strip()}


def conditions(space: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """For each conditional parameter, (the group parameter it depends on, the option that must be picked)."""
    groups = {bare(key): key for key in space}
    found = {}
    for key in space:
        parts = bare(key).split(".")
        if len(parts) >= 3 and parts[0] in groups and groups[parts[0]] != key:
            found[key] = (groups[parts[0]], parts[1])
    return found


def suggest(trial: Any, key: str, distribution: Any) -> Any:
    """One value of `distribution` for `key`, through optuna's public suggest API."""
    import optuna.distributions as dist

    if isinstance(distribution, dist.CategoricalDistribution):
        return trial.suggest_categorical(key, list(distribution.choices))
    if isinstance(distribution, dist.IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)  # fmt: skip
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step,
                               log=distribution.log)  # fmt: skip


def sample(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's parameters: every unconditional one, then each conditional one whose option was picked."""
    depends = conditions(space)
    chosen = {key: suggest(trial, key, space[key]) for key in space if key not in depends}
    for key, (group, option) in depends.items():
        if option in names(chosen[group]):
            chosen[key] = suggest(trial, key, space[key])
    return chosen
