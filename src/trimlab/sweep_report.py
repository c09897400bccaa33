"""After a sweep: its accuracy-vs-cost Pareto plot in the sweep dir, and on W&B beside the sweep's runs.

The plot's axes are the sweep's objectives (`optimized_metric`: the first metric and the first cost), else
test/acc against latency. With `logger=wandb` the plot and the sweep summary go to one more W&B run in the
sweep's group (`job_type: sweep`), so the group shows the front next to the trials.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trimlab import schema

log = logging.getLogger(__name__)


def axes(objectives: list[str]) -> tuple[str, str]:
    """The first objective metric where higher is better (not test/loss) and the first objective cost."""
    scores = schema.names(where="metrics", compared=True, better="higher")

    def deployed_score(key: str) -> bool:  # cost.deploy.best.test/acc: the deployed variant's accuracy
        return key.startswith("cost.deploy.best.test/") and not key.endswith("/loss")

    metric = next((k for k in objectives if k in scores), None)
    metric = metric or next((k.removeprefix("cost.") for k in objectives if deployed_score(k)), "test/acc")
    costs = (k.removeprefix("cost.") for k in objectives if k.startswith("cost.") and not deployed_score(k))
    return metric, next(costs, "latency_ms_p50")


def as_compare_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sweep-summary rows in trimlab-compare's shape (run, run_dir, cost keys without `cost.`)."""
    return [{"run": r["job"], **{k.removeprefix("cost."): v for k, v in r.items() if v is not None}} for r in rows]


def write_pareto(sweep_dir: Path, rows: list[dict[str, Any]], objectives: list[str], tolerance_pt: float = 1.0,
                 announce: bool = True):  # fmt: skip
    """pareto.png in the sweep dir; None when fewer than two jobs completed. Refused (an error the caller logs)
    when the jobs timed serving cost differently and the plot's cost is a serving one. `announce`: print the
    plot's pick (a constrained search names its own winner, chosen on validation)."""
    from trimlab import pareto
    from trimlab.compare import fmt

    metric, cost = axes(objectives)
    runs = [r for r in as_compare_rows(rows) if r["status"] == "completed" and metric in r and cost in r]
    if len(runs) < 2:
        return None
    pareto.check_alike(runs, cost)
    png = sweep_dir / "pareto.png"
    _, pick = pareto.pareto(runs, metric, cost, tolerance_pt, png)
    if pick is not None and announce:
        print(f"sweep: cheapest run within {tolerance_pt} pt of the best {metric}: {pick['run']} "
              f"({metric} {pick[metric]:.4f}, {cost} {fmt(pick[cost])}); plot: {png}", flush=True)  # fmt: skip
    return png


def log_to_wandb(
    config: DictConfig, sweep_dir: Path, png: Path | None, rows: list[dict], objectives: list[str]
) -> None:
    """One W&B run for the sweep itself: its Pareto plot and summary table, in the trials' group."""
    settings = OmegaConf.select(config, "logger.wandb")
    if not settings:
        return
    import wandb

    from trimlab.loggers import wandb_key_configured

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_key_configured() else "offline")
    # One W&B run per sweep dir: a resumed sweep updates it rather than adding another.
    run_id = "sweep-" + hashlib.sha256(str(sweep_dir.absolute()).encode()).hexdigest()[:12]
    run = wandb.init(
        project=settings.get("project"), entity=settings.get("entity"), group=settings.get("group") or sweep_dir.name,
        job_type="sweep", id=run_id, resume="allow", name=f"{sweep_dir.name}-sweep",
        tags=list(settings.get("tags") or []), dir=str(sweep_dir), mode=mode,
        config={"sweep_dir": str(sweep_dir), "optimized_metric": objectives},
    )  # fmt: skip
    columns = list(rows[0]) if rows else ["job"]
    payload: dict[str, Any] = {"sweep_summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns]
                                                                                    for r in rows])}  # fmt: skip
    if png is not None:
        payload["pareto"] = wandb.Image(str(png))
    run.log(payload)
    run.summary.update({"jobs": len(rows), "failed": sum(r["status"] == "failed" for r in rows)})
    run.finish()


def report(config: DictConfig, sweep_dir: Path, rows: list[dict[str, Any]], objectives: list[str]) -> None:
    """Never fails the sweep: its jobs' results are already on disk. `objectives` are the sweep's
    `optimized_metric` keys (trimlab.sweep reads them; this module imports nothing that imports it back)."""
    png = None
    try:
        constrained = OmegaConf.select(config, "hydra.sweeper.within") is not None
        png = write_pareto(sweep_dir, rows, objectives, announce=not constrained)
    except Exception as err:  # noqa: BLE001 - a plot that fails is logged, not fatal
        log.warning("sweep Pareto plot not written (%s: %s)", type(err).__name__, err)
    try:
        log_to_wandb(config, sweep_dir, png, rows, objectives)
    except Exception as err:  # noqa: BLE001 - nor is an upload that fails
        log.warning("sweep not logged to W&B (%s: %s)", type(err).__name__, err)
