"""Deploy settings checked from the config alone, before any training (torch is not imported here): each listed
target's packages installed, a known objective, a tolerance that is not negative."""

from __future__ import annotations

import importlib.util

from omegaconf import DictConfig, OmegaConf

from trimlab.errors import ConfigError

OBJECTIVES = ("latency", "throughput", "cost_per_million")


def check_deploy(cfg: DictConfig) -> None:
    node = cfg.get("deploy") or {}
    objective = OmegaConf.select(cfg, "deploy.objective", default="latency")
    if objective not in OBJECTIVES:
        raise ConfigError(f"deploy.objective={objective} is unknown; use one of {', '.join(OBJECTIVES)}")
    tolerance = OmegaConf.select(cfg, "deploy.tolerance_pt", default=0.5)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise ConfigError(f"deploy.tolerance_pt={tolerance} must be a number >= 0 (accuracy points), e.g. 0.5")
    for name, target in node.items():
        if not isinstance(target, DictConfig) or "_target_" not in target:
            continue
        missing = [p for p in target.get("_packages_") or [] if importlib.util.find_spec(str(p)) is None]
        if missing:
            raise ConfigError(
                f"deploy target {name} needs {', '.join(missing)}, which is not installed; "
                f"pip install 'trimlab[deploy]' (or drop {name} from deploy=[...])"
            )
