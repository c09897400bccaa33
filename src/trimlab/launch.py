"""What runs the command line before Hydra does: the config dir, each sweep value composed once (`glob(*)`
expanded as Hydra's sweeper would), the checks, a resume's rewritten command, then the Hydra app.

`preflight` composes the config the way Hydra will, checks group options, value ranges and the output dir
(`trimlab.checks`), and turns `ckpt_path=last` into a resume of that run in its own run dir (`trimlab.resume`), so
bad input fails in a second with one clear line. Only Hydra and OmegaConf are imported here: torch and Lightning
load after the checks pass.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trimlab import rundir
from trimlab.checks import (
    check_output_dir,
    check_run_dir,
    refuse_hydra_sweeps,
    required_arguments,
    smoke_test_stand_ins,
    validate_config,
)
from trimlab.compression_checks import check_listed_once
from trimlab.errors import ConfigError, full_errors, user_errors
from trimlab.redaction import refuse_secret_overrides
from trimlab.resume import check_not_another_run, resume_command
from trimlab.rundir import config_dir  # noqa: F401 - the entry points' config dir, imported from here


def _variants(overrides: list[str]) -> list[list[str]]:
    """One override list per sweep value (other sweeps at their first value); a plain run gives one list."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    base, sweeps = [], []
    for override in parsed:
        if not override.is_sweep_override():
            base.append(override.input_line)
            continue
        try:
            values = _sweep_values(override)
        except HydraException:  # interval sweeps: the sweeper picks values, nothing to enumerate
            continue
        sweeps.append([f"{override.get_key_element()}={value}" for value in values])
    first = base + [values[0] for values in sweeps]
    variants = [first]
    for index, values in enumerate(sweeps):
        for value in values[1:]:
            variant = list(first)
            variant[len(base) + index] = value
            variants.append(variant)
    return variants


def _sweep_values(override) -> list[str]:
    """A sweep's values; `glob(*)` lists the group's options, as Hydra's sweeper does with its config loader."""
    if isinstance(override.value(), Glob):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            override.config_loader = GlobalHydra.instance().config_loader()
            values = list(override.sweep_string_iterator())
        if not values:
            raise ConfigError(f"{override.input_line} matches no option of '{override.get_key_element()}'")
        return values
    return list(override.sweep_string_iterator())


def _sample_value(override) -> str:
    """One value a sweeper could pick for a search-space override (its first choice, or an interval's start)."""
    value = override.value()
    if isinstance(value, Glob):
        return _sweep_values(override)[0]
    for attribute in ("list", "start"):
        if hasattr(value, attribute):
            picked = getattr(value, attribute)
            picked = picked[0] if attribute == "list" else picked
            return str(picked.list[0] if hasattr(picked, "list") else picked)
    return override.get_value_element_as_str()


def check_search_space(config_name: str, cfg: DictConfig, overrides: list[str]) -> None:
    """Compose once with a value for every searched key (from hydra.sweeper.params and the command line), so
    a search space naming an unknown key fails now, not in every trial."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    searched = [f"{key}={value}" for key, value in params.items()] + [o for o in overrides if "(" in o]
    if not searched:
        return
    parsed = OverridesParser.create().parse_overrides(searched)
    samples = [f"{o.get_key_element()}={_sample_value(o)}" for o in parsed if o.is_sweep_override()]
    fixed = [o for o in overrides if o not in searched]
    try:
        _compose(config_name, [*fixed, *samples])
    except (HydraException, OmegaConfBaseException) as err:
        unknown = re.match(r"Could not override '([^']+)'", str(err))
        if unknown:
            raise ConfigError(
                f"the search space names {unknown.group(1)}, which is not in the config; search an existing key "
                "(--cfg job lists them), or write +<key> as the param's name in an hparams_search file to add one"
            ) from None
        raise ConfigError(f"the search space does not fit the config: {_one_line(err)}") from err


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=config_name):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def _one_line(err: Exception) -> str:
    if isinstance(err, MissingConfigException) and "/" in str(err.missing_cfg_file or ""):
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        # Hydra lists the options for `group=x`, not for an element of a list (`compression=[a,x]`).
        options = err.options or sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
        return f"unknown option '{option}' for '{group}'; available: {', '.join(options)} (use {group}=<option>)"
    return " ".join(str(err).split())


def launch(hydra_app: Callable[[], None], config_name: str) -> None:
    """An entry point: check the command line, then hand it to the Hydra app."""
    rundir.register_resolvers()
    # conf/hydra/sweeper/basic.yaml stands in for Hydra's `basic` on purpose; Hydra warns that the names match.
    warnings.filterwarnings("ignore", message=r"(?s).*'hydra/sweeper/basic' is validated against ConfigStore")
    sys.argv = [sys.argv[0], *preflight(sys.argv[1:], config_name)]
    hydra_app()


def preflight(argv: list[str], config_name: str = "train") -> list[str]:
    """Check a command line before Hydra runs it; return it, rewritten for a resume."""
    from hydra._internal.utils import get_args_parser

    rundir.register_resolvers()
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir or args.config_path:
        return argv
    if args.config_name and args.config_name != config_name:
        return argv
    with user_errors(HydraException, OmegaConfBaseException, code=2, describe=_one_line):
        try:
            return _checked(argv, args, config_name)
        except ValueError as err:  # Hydra's defaults list refuses a number as an option name (precision=32)
            if full_errors() or "Config group override" not in str(err):
                raise
            raise ConfigError(f"{err}: option names are strings; see --help for the options of each group") from err


def _checked(argv: list[str], args, config_name: str) -> list[str]:
    """Every check of the command line, each sweep value composed once; the command to run (a resume's)."""
    overrides = list(args.overrides)
    refuse_secret_overrides(overrides)
    refuse_hydra_sweeps(overrides)
    check_listed_once(overrides)
    configs = [_compose(config_name, variant) for variant in _variants(overrides)]
    cfg = configs[0]
    if "run_dir" in list(cfg.keys()):
        required_arguments(cfg, f"trimlab-{config_name}")
    for each in configs:
        smoke_test_stand_ins(each)
        validate_config(each)
    multirun = args.multirun or str(OmegaConf.select(cfg, "hydra.mode")).endswith("MULTIRUN")
    if multirun:
        check_search_space(config_name, cfg, overrides)
    if "run_dir" in list(cfg.keys()):
        check_run_dir(cfg)
    resumed = resume_command(cfg, argv, overrides, args.multirun, bool(args.cfg))
    if resumed:
        argv, overrides = resumed
        cfg = _compose(config_name, overrides)
    if config_name == "train" and not multirun and not args.cfg:
        check_not_another_run(cfg)
    output_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    check_output_dir(Path(OmegaConf.select(cfg, output_key)), output_key)
    return argv
