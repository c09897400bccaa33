"""Checks made before Hydra starts a job, so bad input fails in a second with one clear line.

`preflight` composes the config the way Hydra will (each value of a sweep once), checks group options, value
ranges and the output dir, and turns `ckpt_path=last` into a resume of that run in its own run dir.
Only Hydra and OmegaConf are imported here: torch and Lightning load after the checks pass.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trimlab import rundir
from trimlab.compression_checks import check_compression, check_listed_once, strategy_name
from trimlab.errors import ConfigError, TrimlabError, fail, full_errors
from trimlab.loggers import check_tracking
from trimlab.sweep import objective_keys


def config_dir() -> str:
    """The packaged configs in an installed wheel; the repo's top-level conf/ in a checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def _number(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}={value!r} is not a number; set {key}=<number>")
    return value


def validate_config(cfg: DictConfig) -> None:
    """Out-of-range values that would otherwise fail (or silently misbehave) deep inside training."""
    epochs, max_steps = _number(cfg, "trainer.max_epochs"), _number(cfg, "trainer.max_steps")
    if epochs is not None and epochs < 1 and not (epochs == -1 and (max_steps or 0) > 0):
        raise ConfigError(f"trainer.max_epochs={epochs} must be >= 1; set trainer.max_epochs=<n>")
    lr = _number(cfg, "task.optimizer.lr")
    if lr is not None and lr <= 0:
        raise ConfigError(f"task.optimizer.lr={lr} must be > 0; set task.optimizer.lr=<positive float>")
    for key in ("data.batch_size", "data.eval_batch_size", "trainer.accumulate_grad_batches"):
        value = _number(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1; set {key}=<positive int>")
    labelled = _number(cfg, "data.labelled_fraction")
    if labelled is not None and not 0 < labelled <= 1:
        raise ConfigError(f"data.labelled_fraction={labelled} is outside (0, 1]; e.g. 0.1 keeps 10% of the labels")
    fractions = {}
    held_out = [k for k in (cfg.get("data") or {}) if str(k).endswith("_fraction") and k != "labelled_fraction"]
    for key in held_out:
        value = fractions[f"data.{key}"] = _number(cfg, f"data.{key}")
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"data.{key}={value} is outside (0, 1); set data.{key}=<fraction, e.g. 0.1>")
    if sum(v for v in fractions.values() if v) >= 1:
        listed = " + ".join(f"{k}={v}" for k, v in fractions.items())
        raise ConfigError(f"{listed} leaves nothing to train on; make the held-out fractions sum to less than 1")
    for group in ("data", "model", "task"):
        missing = sorted(OmegaConf.missing_keys(cfg[group])) if cfg.get(group) is not None else []
        if missing:
            key = missing[0] if missing[0].startswith(f"{group}.") else f"{group}.{missing[0]}"
            raise ConfigError(f"{key} is required and not set; pass {key}=<value>")
    check_strategy(cfg)
    check_pairings(cfg)
    check_compression(cfg)
    check_tracking(cfg)  # an MLflow server that does not answer
    objective_keys(cfg)  # a known optimized_metric, or a clear error
    price = _number(cfg, "cost.price_per_hour")
    if price is not None and price < 0:
        raise ConfigError(f"cost.price_per_hour={price} must be >= 0")


def check_pairings(cfg: DictConfig) -> None:
    """Settings that are valid alone but silently wrong together."""
    model_target = str(OmegaConf.select(cfg, "model._target_", default="") or "")
    tokenizer = OmegaConf.select(cfg, "data.tokenizer", default=None)
    if model_target.endswith("PretrainedEncoder") and tokenizer not in (None, "pretrained"):
        raise ConfigError(
            "model=hf_encoder needs its own tokenizer (other token ids mean other words): set "
            "data.tokenizer=pretrained data.tokenizer_path=${model.pretrained_path}"
        )
    freeze = _number(cfg, "finetune.freeze_epochs") or 0
    name = strategy_name(cfg)
    if freeze > 0 and any(word in name.lower() for word in ("ddp", "fsdp", "modelparallel", "model_parallel")):
        raise ConfigError(
            f"finetune.freeze_epochs={freeze} cannot run under {name.rsplit('.', 1)[-1]}: weights frozen when the "
            "model is wrapped are never synchronized after unfreezing; train on one device or set it to 0"
        )


def check_strategy(cfg: DictConfig) -> None:
    """FSDP needs GPUs: say so before Lightning does it deep inside Trainer construction."""
    target = strategy_name(cfg, default="")
    if not (target.endswith("FSDPStrategy") or target == "fsdp"):
        return
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if accelerator == "cpu" or accelerator == "auto" and not _cuda_available():
        raise ConfigError(
            "strategy=fsdp needs GPUs (Lightning's FSDP refuses CPU); to shard on CPU use strategy=model_parallel"
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _variants(overrides: list[str]) -> list[list[str]]:
    """One override list per sweep value (other sweeps at their first value); a plain run gives one list."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    base, sweeps = [], []
    for override in parsed:
        if not override.is_sweep_override():
            base.append(override.input_line)
            continue
        try:
            values = list(override.sweep_string_iterator())
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


def _sample_value(override) -> str:
    """One value a sweeper could pick for a search-space override (its first choice, or an interval's start)."""
    value = override.value()
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


def check_output_dir(path: Path) -> None:
    anchor = rundir.nearest_existing(path)
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write the run dir {path}: {anchor} is not a writable directory; "
            "set paths.output_root=<writable dir> (or env TRIMLAB_OUTPUT, or hydra.run.dir=<dir>)"
        )


def check_run_dir(cfg: DictConfig) -> None:
    """trimlab-eval / trimlab-predict: the required arguments, and a run dir that holds a saved config."""
    app = f"trimlab-{cfg.hydra.job.name}"
    for key in ("run_dir", "inputs"):
        if key in cfg and OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required: {app} {key}=<path> (see {app} --help)")
    run_dir = Path(cfg.run_dir)
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a trimlab run dir (no .hydra/config.yaml); pass run_dir=<a run's dir>")


def _resume(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Overrides that resume the run a checkpoint belongs to: its saved overrides, then the user's."""
    ckpt = str(cfg.ckpt_path)
    explicit_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    if ckpt == "last":
        if explicit_dir:
            run_dir = Path(explicit_dir)
        else:
            task_dir = Path(cfg.paths.output_root) / cfg.task_name
            run_dir = rundir.latest_run_dir(task_dir)
            if run_dir is None:
                raise ConfigError(
                    f"ckpt_path=last: no unfinished run with checkpoints/last.ckpt under {task_dir}; "
                    "name the run with hydra.run.dir=<run dir> or pass ckpt_path=<file>"
                )
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
    else:
        checkpoint = Path(ckpt)
        run_dir = checkpoint.absolute().parents[1]
    if not checkpoint.is_file():
        raise ConfigError(f"ckpt_path: {checkpoint} does not exist; pass an existing checkpoint file")
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not (checkpoint.parent.name == "checkpoints" and saved.is_file()):
        return overrides  # a checkpoint from elsewhere: start a new run from its state
    rundir.set_run_id(_saved_run_id(run_dir))
    drop = ("ckpt_path=", "hydra.run.dir=")
    previous = [o for o in OmegaConf.load(saved) if not str(o).startswith(drop)]
    mine = [o for o in overrides if not o.startswith(drop)]
    # The run keeps its .hydra/ as first written: what it was started with, and what the next resume replays.
    resume = [f"ckpt_path={checkpoint.absolute()}", f"hydra.run.dir={run_dir.absolute()}", "hydra.output_subdir=null"]
    return [*previous, *mine, *resume]


def _saved_run_id(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    if summary.is_file():
        import json

        try:
            return json.loads(summary.read_text())["run_id"]
        except (ValueError, KeyError):
            pass
    return rundir.run_id_from_dir(run_dir) or rundir.current_run_id()


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
    try:
        check_listed_once(args.overrides)
        variants = _variants(args.overrides)
        configs = [_compose(config_name, overrides) for overrides in variants]
        for cfg in configs:
            validate_config(cfg)
        cfg = configs[0]
        if args.multirun or str(OmegaConf.select(cfg, "hydra.mode")).endswith("MULTIRUN"):
            check_search_space(config_name, cfg, list(args.overrides))
        if "run_dir" in cfg:
            check_run_dir(cfg)
        if args.multirun and cfg.get("ckpt_path") == "last":
            raise ConfigError("ckpt_path=last resumes one run; drop -m, or give each job its own ckpt_path=<file>")
        if not args.multirun and cfg.get("ckpt_path") and not args.cfg:
            resumed = _resume(cfg, list(args.overrides))
            if resumed != list(args.overrides):
                cfg = _compose(config_name, resumed)
                flags = [a for a in argv if a not in args.overrides]
                argv = [*flags, *resumed]
        check_output_dir(Path(OmegaConf.select(cfg, "hydra.sweep.dir" if args.multirun else "hydra.run.dir")))
    except (TrimlabError, HydraException, OmegaConfBaseException) as err:
        if full_errors():
            raise
        fail(_one_line(err), code=2)
    except ValueError as err:  # Hydra's defaults list refuses a number as an option name (precision=32)
        if full_errors() or "Config group override" not in str(err):
            raise
        fail(f"{err}: option names are strings; see --help for the options of each group", code=2)
    return argv
