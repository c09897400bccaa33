"""The stage registry: what each compression stage declares, and every check derived from it.

A stage is a node of the `compression` group with a `_target_`; the node's key (its option file's one key) is
the stage's name. What trimlab must know about a stage beyond its class sits beside the `_target_`, in
`_stage_` (every key optional):

    prune:
      _target_: trimlab.compression.pruning.Prune
      _stage_:
        ranges: {sparsity: [0, 1]}  # knob: [low, high)
      sparsity: 0.5

- `exports`: the result is an exported graph later stages cannot change, so it comes last (and only one such);
- `trains_main_fit`: the stage acts during the main fit (distillation), so it comes first;
- `precision`: the precision the ledger records for the stage's model (default `32-true`);
- `ranges`: knobs that must lie in `[low, high)`.

Why the option file and not the class: these checks run in `trimlab-train`'s preflight, before torch is
imported (a bad command line fails in a second), and every stage module imports torch. The composed config is
what the preflight has, so a declaration there is read the same way before the run and inside it, with no
import. A stage added from outside the package (its module on PYTHONPATH, its option file in a
`hydra.searchpath` dir) is then its class and its YAML file, exactly like the built-in ones.

Only OmegaConf is imported here; `build_stages` imports the factory (and torch) when the stages are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trimlab.errors import ConfigError

KEY = "_stage_"
FIELDS = ("exports", "trains_main_fit", "precision", "ranges")


@dataclass(frozen=True)
class Declaration:
    """One stage as its option file declares it."""

    name: str
    exports: bool = False
    trains_main_fit: bool = False
    precision: str = "32-true"
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def declaration(name: str, node: DictConfig) -> Declaration:
    """The stage's `_stage_` read into a `Declaration`; a key it does not know is a typo, refused."""
    raw = node.get(KEY)
    raw = OmegaConf.create({}) if raw is None else raw
    unknown = sorted(set(raw) - set(FIELDS)) if isinstance(raw, DictConfig) else [str(raw)]
    if unknown:
        raise ConfigError(
            f"compression.{name}.{KEY} declares {', '.join(map(str, unknown))}; it takes {', '.join(FIELDS)}"
        )
    declared_ranges = raw.get("ranges") or OmegaConf.create({})
    if not isinstance(declared_ranges, DictConfig):
        raise ConfigError(f"compression.{name}.{KEY}.ranges={declared_ranges}: declare {{knob: [low, high]}}")
    ranges = {}
    for knob, bounds in declared_ranges.items():
        if not (isinstance(bounds, ListConfig) and len(bounds) == 2 and all(map(is_number, bounds))):
            raise ConfigError(f"compression.{name}.{KEY}.ranges.{knob}={bounds}: declare [low, high], two numbers")
        ranges[str(knob)] = (bounds[0], bounds[1])
    return Declaration(
        name=name,
        exports=bool(raw.get("exports", False)),
        trains_main_fit=bool(raw.get("trains_main_fit", False)),
        precision=str(raw.get("precision", "32-true")),
        ranges=ranges,
    )


def declared(cfg: DictConfig) -> list[Declaration]:
    """The stages picked, in order; knobs set for a stage not picked (a search space's `++`) are no stage."""
    stages = cfg.get("compression") or {}
    return [
        declaration(str(name), node)
        for name, node in stages.items()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def stage_names(cfg: DictConfig) -> list[str]:
    return [stage.name for stage in declared(cfg)]


def check_knobs(cfg: DictConfig, stages: list[Declaration]) -> None:
    """Each declared range, checked on the value the run will use."""
    for stage in stages:
        for knob, (low, high) in stage.ranges.items():
            key = f"compression.{stage.name}.{knob}"
            value = OmegaConf.select(cfg, key, default=None)
            if value is not None and not (is_number(value) and low <= value < high):
                raise ConfigError(f"{key}={value!r} is outside [{low}, {high}); set {key}=<a number in that range>")


def check_order(stages: list[Declaration]) -> None:
    """An exporting stage comes last (one of them); a stage that trains the main fit comes first."""
    names = [stage.name for stage in stages]
    exporting = [stage.name for stage in stages if stage.exports]
    if exporting and (len(exporting) > 1 or names[-1] != exporting[0]):
        raise ConfigError(
            f"compression=[{','.join(names)}]: {exporting[0]} turns the model into an exported int8/bf16 graph that "
            "later stages cannot change; list one such stage, last"
        )
    late = [stage.name for stage in stages[1:] if stage.trains_main_fit]
    if late:
        raise ConfigError(f"compression=[{','.join(names)}]: {late[0]} trains the model, list it first")


def check_stages(cfg: DictConfig) -> list[Declaration]:
    """The stages picked, their knobs and their order checked: what the preflight and `build_stages` share."""
    stages = declared(cfg)
    check_knobs(cfg, stages)
    check_order(stages)
    return stages


def build_stages(cfg: DictConfig) -> list[Any]:
    """The stage objects, in the order listed, each set to what its option file declares."""
    from trimlab.factory import make  # torch loads here, once the checks have passed

    stages = []
    for declared_stage in check_stages(cfg):
        knobs = OmegaConf.to_container(cfg.compression[declared_stage.name], resolve=True)
        knobs.pop(KEY, None)  # trimlab's key, not an argument of the class
        stage = make(OmegaConf.create(knobs), f"compression.{declared_stage.name}")
        stage.name, stage.exports = declared_stage.name, declared_stage.exports
        stage.trains_main_fit, stage.precision = declared_stage.trains_main_fit, declared_stage.precision
        stages.append(stage)
    return stages
