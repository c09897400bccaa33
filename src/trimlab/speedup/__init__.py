"""The `speedup` group: training-efficiency methods, picked as a list (`speedup=[ema,channels_last]`).

Each method is a node of the group with a `_target_`, its option file's one key naming it, and instantiates a
Lightning callback: Lightning's own where one exists (`ema`, `swa`), else one in `speedup.methods`. What a
method needs from a run sits beside the `_target_` in `_method_` (every key optional), read before training:

    channels_last:
      _target_: trimlab.speedup.methods.ChannelsLast
      _method_: {modalities: [vision]}

- `modalities`: the data modalities it applies to (default: every one);
- `sharded`: whether it works with a sharded model (FSDP, model_parallel; default true);
- `distributed`: whether it works under DDP (default true).

A method can also define `configure(cfg)`, called on the run's config before the data and model are built (the
large batch multiplies batch size and learning rate there), and `check(datamodule, backbone)`, called after,
before the fit: a method that cannot apply fails then, with one line.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from trimlab.errors import ConfigError

KEY = "_method_"
FIELDS = ("modalities", "sharded", "distributed")


def picked(cfg: DictConfig) -> dict[str, DictConfig]:
    """The methods picked, by name; knobs set for a method not picked are no method."""
    methods = cfg.get("speedup") or {}
    return {str(name): node for name, node in methods.items() if isinstance(node, DictConfig) and "_target_" in node}


def check_config(cfg: DictConfig) -> None:
    """Before anything is built (the preflight too): the run's target, and a target for `stop_at_target`."""
    from trimlab.schema import parse_target

    target = OmegaConf.select(cfg, "cost.target", default=None)
    if target is not None:
        parse_target(target)
    for name, node in picked(cfg).items():
        if "target" in node and OmegaConf.select(node, "target", default=None) is None:
            raise ConfigError(f"speedup={name} needs a target: pass cost.target=val/acc:0.98 (or "
                              f"speedup.{name}.target=...)")  # fmt: skip


def build(cfg: DictConfig) -> list[Any]:
    """The method callbacks, in the order listed, each named; `configure` applied to `cfg`."""
    from trimlab.factory import make

    methods = []
    for name, node in picked(cfg).items():
        declared = node.get(KEY) or OmegaConf.create({})
        unknown = sorted(set(declared) - set(FIELDS))
        if unknown:
            raise ConfigError(f"speedup.{name}.{KEY} declares {', '.join(unknown)}; it takes {', '.join(FIELDS)}")
        knobs = OmegaConf.to_container(node, resolve=True)
        knobs.pop(KEY, None)
        method = make(OmegaConf.create(knobs), f"speedup.{name}")
        method.speedup_name, method.speedup_needs = name, OmegaConf.to_container(declared)
        if hasattr(method, "configure"):
            method.configure(cfg)
        methods.append(method)
    return methods


def check(methods: list[Any], cfg: DictConfig, datamodule: Any, backbone: Any) -> None:
    """Each method against the run's modality and strategy, then its own check."""
    from trimlab.processes import distributed_strategy, strategy_name

    strategy = strategy_name(cfg).lower()
    sharded = any(word in strategy for word in ("fsdp", "modelparallel", "model_parallel"))
    for method in methods:
        name, needs = method.speedup_name, method.speedup_needs
        modalities = needs.get("modalities")
        modality = getattr(datamodule, "modality", None)
        if modalities and modality not in modalities:
            raise ConfigError(f"speedup={name} applies to {' or '.join(modalities)} data, not {modality} "
                              f"({type(datamodule).__name__}); remove it from speedup=[...]")  # fmt: skip
        if sharded and needs.get("sharded") is False:
            raise ConfigError(f"speedup={name} does not work with a sharded model (strategy {strategy_name(cfg)}); "
                              "use strategy=auto or ddp, or remove it")  # fmt: skip
        if distributed_strategy(cfg) and needs.get("distributed") is False:
            raise ConfigError(f"speedup={name} changes which weights train during the fit, which DDP does not "
                              f"allow (strategy {strategy_name(cfg)}); train on one process or remove it")  # fmt: skip
        if hasattr(method, "check"):
            method.check(datamodule, backbone)


def facts(methods: list[Any]) -> list[dict[str, Any]]:
    """What the summary keeps of each method: its name and what it changed."""
    return [{"name": m.speedup_name, **(m.facts() if hasattr(m, "facts") else {})} for m in methods]
