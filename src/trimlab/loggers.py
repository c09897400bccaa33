"""Loggers from config, W&B's offline-without-a-key rule, and the final metric/cost keys sent to each."""

from __future__ import annotations

import functools
import logging
import netrc
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trimlab.errors import ConfigError, TrimlabError

log = logging.getLogger(__name__)


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


@functools.cache
def check_mlflow_server(uri: str, setting: str = "logger.mlflow.tracking_uri") -> None:
    """A tracking URI where nothing answers fails now, within 5 s: MLflow's own client retries for minutes.
    Any HTTP answer (even 401 from an auth proxy, or 404 where a host has no /health) counts as a server."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as err:  # URLError, refused connections and timeouts are OSErrors
        reason = getattr(err, "reason", err)
    raise ConfigError(
        f"{setting}={uri}: no MLflow server answers there ({reason}); start one (mlflow server "
        f"--backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000) or fix the URI"
    )


def configured_uri(cfg: DictConfig) -> str | None:
    """`logger.mlflow.tracking_uri`, resolved where it can be. The checks before a run see no Hydra job, so the
    default (`file:${paths.output_dir}/mlruns`, a `${hydra:...}` value) stays as written: not a server anyway."""
    uri = OmegaConf.select(cfg, "logger.mlflow.tracking_uri", default=None, throw_on_resolution_failure=False)
    if uri is None:
        uri = (OmegaConf.to_container(cfg.logger.mlflow, resolve=False) or {}).get("tracking_uri")
    return None if uri is None else str(uri)


def check_tracking(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "logger.mlflow") is None:
        return
    configured = configured_uri(cfg)
    uri = str(configured or os.environ.get("MLFLOW_TRACKING_URI") or "")
    if uri.startswith(("http://", "https://")):
        check_mlflow_server(uri, "logger.mlflow.tracking_uri" if configured else "MLFLOW_TRACKING_URI")


def build_loggers(logger_cfg: DictConfig | None) -> list[Any]:
    if not logger_cfg:
        return []
    if "wandb" in logger_cfg and not os.environ.get("WANDB_MODE") and not wandb_key_configured():
        log.info("W&B: no API key configured (WANDB_API_KEY or `wandb login`), logging offline")
        os.environ["WANDB_MODE"] = "offline"
    mlflow_uri = str((logger_cfg.get("mlflow") or {}).get("tracking_uri", ""))
    if mlflow_uri.startswith("file:"):  # a file store in the run dir is the point: opt out of MLflow's refusal
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    loggers = [instantiate(conf) for conf in logger_cfg.values() if conf is not None and "_target_" in conf]
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            start_wandb(logger)
    return loggers


def start_wandb(logger: Any, wait_s: int = 30) -> None:
    """Start the W&B run now, waiting while its id is still held: a run resumed right after a kill finds the killed
    process's W&B service closing that id for a second or two."""
    for waited in range(wait_s + 1):
        try:
            logger.experiment  # noqa: B018 - the property calls wandb.init
            return
        except Exception as err:
            if "is in use" not in str(err):
                raise
            if waited == wait_s:
                raise TrimlabError(
                    f"W&B run id {logger.version} is still held by another process's W&B service "
                    f"(WANDB_SERVICE={os.environ.get('WANDB_SERVICE', 'unset')}); stop that process or unset "
                    "WANDB_SERVICE, then resume again"
                ) from err
            if waited == 0:
                log.info("W&B: run id %s still held by a stopped process; waiting for it", logger.version)
            time.sleep(1)


def log_final(loggers: list[Any], scores: dict[str, float], hparams: dict[str, Any], step: int) -> None:
    """The summary's metric and cost keys, identically to every logger, with the resolved (redacted) config as
    hyperparameters: W&B's run config, MLflow's params."""
    for logger in loggers:
        logger.log_hyperparams(hparams)
        if type(logger).__name__ == "MLFlowLogger":  # params are cut at 250 characters; a tag keeps them whole
            logger.experiment.set_tag(logger.run_id, "overrides", str(hparams.get("overrides", "")))
        logger.log_metrics(scores, step=step)
        logger.save()


def log_images(loggers: list[Any], images: dict[str, Any]) -> None:
    """Plots as images where the logger shows them (W&B), as artifacts where it keeps files (MLflow)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)])
        elif type(logger).__name__ == "MLFlowLogger":
            for path in images.values():
                logger.experiment.log_artifact(logger.run_id, str(path))


def finish(loggers: list[Any], status: str) -> None:
    for logger in loggers:
        logger.finalize("success" if status == "completed" else "failed")
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish(exit_code=0 if status == "completed" else 1)
