"""Runs read back from a tracking server as trimlab-compare rows: `--mlflow URI EXPERIMENT` and
`--wandb ENTITY/PROJECT` beside local run dirs.

A row holds what a local run's row holds: test metrics under their names, top-level cost keys without the
`cost/` prefix the loggers add, and where the run lives (`run_dir`: the server's address and run id).
"""

from __future__ import annotations

import os
from typing import Any

from trimlab.deploy import rows as deploy_rows
from trimlab.errors import TrimlabError

STATUS = {"finished": "completed", "failed": "failed", "killed": "failed", "crashed": "failed", "running": "running"}


def tracked_row(name: str, task: str, status: str, overrides: str, values: dict, where: str) -> dict[str, Any]:
    row: dict[str, Any] = {"run": name, "task": task, "status": STATUS.get(status.lower(), status.lower())}
    row["overrides"] = overrides
    for key, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if key.startswith(("test/", "val/")):
            row[key] = value
        elif key.startswith("cost/") and key.count("/") == 1:  # not cost/baseline/... nor cost/after/<stage>/...
            row[key.removeprefix("cost/")] = value
    ledger = deploy_rows.ledger_from_flat(values)  # cost/deploy/<target>/<variant>/<figure>
    if ledger:
        row.update(ledger=ledger, **deploy_rows.best_columns(ledger))
    row["run_dir"] = where
    return row


def mlflow_runs(uri: str, experiment: str) -> list[dict[str, Any]]:
    from trimlab.loggers import check_mlflow_server

    if uri.startswith(("http://", "https://")):
        check_mlflow_server(uri, "--mlflow")
    elif uri.startswith("file:"):
        store = uri.removeprefix("file://").removeprefix("file:")
        if not os.path.isdir(store):
            raise TrimlabError(f"--mlflow {uri}: no MLflow file store at {store}; pass a run dir's mlruns/ folder")
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # trimlab's default: a file store in the run dir
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        names = sorted(e.name for e in client.search_experiments()) if found is None else []
        runs = client.search_runs([found.experiment_id], max_results=10000) if found is not None else []
    except MlflowException as err:
        raise TrimlabError(f"MLflow at {uri} refused the query: {' '.join(str(err).split())[:300]}") from err
    if found is None:
        raise TrimlabError(f"MLflow at {uri} has no experiment {experiment!r}; it has: {', '.join(names) or 'none'}")
    if not runs:
        raise TrimlabError(f"MLflow experiment {experiment!r} at {uri} has no runs")
    return [
        tracked_row(run.info.run_name or run.info.run_id, experiment, run.info.status,
                    run.data.tags.get("overrides", run.data.params.get("overrides", "")), run.data.metrics,
                    f"{uri}#{run.info.run_id}")
        for run in runs
    ]  # fmt: skip


def wandb_runs(path: str) -> list[dict[str, Any]]:
    from trimlab.loggers import wandb_key_configured

    if path.count("/") != 1 or not all(path.split("/")):
        raise TrimlabError(f"--wandb {path}: give ENTITY/PROJECT, e.g. --wandb my-team/trimlab")
    if not wandb_key_configured():
        raise TrimlabError(
            f"reading W&B project {path} needs an API key: set WANDB_API_KEY or run `wandb login`; "
            "for offline runs pass their run dirs instead"
        )
    import wandb

    try:
        runs = list(wandb.Api(timeout=30).runs(path))
    except Exception as err:  # wandb raises its CommError, ValueError or requests' errors
        raise TrimlabError(f"W&B could not list the runs of {path}: {' '.join(str(err).split())}") from err
    if not runs:
        raise TrimlabError(f"W&B project {path} has no runs")
    return [wandb_row(run, path) for run in runs if run.job_type != "sweep"]  # a sweep's own run holds no model


def wandb_row(run: Any, path: str) -> dict[str, Any]:
    config = dict(run.config)
    task = config.get("task_name") or run.group or path
    where = f"wandb:{path}/{run.id}"
    return tracked_row(run.name, task, run.state, config.get("overrides", ""), dict(run.summary_metrics), where)
