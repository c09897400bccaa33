"""Sweep bookkeeping: `sweep_summary.json` / `.csv` in the sweep dir, one row per job (failed ones included),
rewritten as each job ends — a killed sweep keeps the rows of the jobs that finished — and the value a job
returns to the sweeper (`optimized_metric`).

Rows are rebuilt from the job dirs' own summaries each time, so the file is right whatever the launcher
(jobs in this process, in joblib workers or on SLURM nodes) and whatever order jobs end in.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from trimlab import schema
from trimlab.errors import ConfigError

log = logging.getLogger("trimlab")
# The summary values a sweep row holds and a sweeper may optimize: those the schema marks `compared`.
METRICS = schema.names(where="metrics", compared=True)
COSTS = schema.names(where="cost", compared=True)
DEPLOYED = "cost.deploy.best."  # objectives on the deployed variant: cost.deploy.best.latency_ms_p50
failed_in_sweep: list[str] = []
# Job number -> run dir of the jobs this process started, so an interrupted sweep can mark the one cut short.
started_jobs: dict[int, Path] = {}


def objective_keys(cfg: DictConfig) -> list[str]:
    value = cfg.get("optimized_metric")
    if value is None:
        return []
    keys = list(value) if isinstance(value, ListConfig | list) else [value]
    costs = schema.names(OmegaConf.select(cfg, "cost.figures"), where="cost", compared=True)  # and the run's own
    for key in keys:
        if str(key).startswith(DEPLOYED):
            check_deployed_objective(cfg, str(key))
        elif not (key in METRICS or key.removeprefix("cost.") in costs):
            raise ConfigError(
                f"optimized_metric={key!r} is not a summary value; use one of {', '.join(METRICS)}, cost.<key> "
                f"with <key> in {', '.join(costs)}, or {DEPLOYED}<figure> (the deployed variant's)"
            )
    return [str(k) for k in keys]


def check_deployed_objective(cfg: DictConfig, key: str) -> None:
    """`cost.deploy.best.<figure>`: a figure of the deployed variant, which only deploy targets make."""
    from trimlab.deploy import rows as deploy_rows

    figure = key.removeprefix(DEPLOYED)
    if not deploy_rows.is_figure(figure):
        raise ConfigError(
            f"optimized_metric={key!r}: {figure!r} is not a deploy ledger figure; use {DEPLOYED}<figure> with "
            f"<figure> in {', '.join(deploy_rows.FIGURES)} or a test/ metric"
        )
    listed = [name for name, node in (cfg.get("deploy") or {}).items() if isinstance(node, DictConfig)]
    if set(listed) <= {"inductor"}:
        raise ConfigError(
            f"optimized_metric={key!r} needs deploy targets beyond inductor; add deploy=[inductor,onnxruntime,openvino]"
        )


def summary_value(summary: dict[str, Any], key: str) -> Any:
    """A summary's value for an objective key: a metric, `cost.<key>`, or `cost.deploy.best.<figure>`."""
    if key.startswith(DEPLOYED):
        return ((summary["cost"].get("deploy") or {}).get("best") or {}).get(key.removeprefix(DEPLOYED))
    return summary["cost"].get(key.removeprefix("cost.")) if key.startswith("cost.") else summary["metrics"].get(key)


def objective(cfg: DictConfig, summary: dict[str, Any] | None) -> float | list[float] | None:
    """What the job returns to the sweeper: the summary's value(s) for `optimized_metric`; None for a failed job
    (the sweeper records a failed trial)."""
    keys = objective_keys(cfg)
    if not keys or not summary or summary.get("status") != "completed":
        return None
    values = [summary_value(summary, key) for key in keys]
    if any(v is None for v in values):
        return None
    return [float(v) for v in values] if len(values) > 1 else float(values[0])


def job_row(job_dir: Path) -> dict[str, Any] | None:
    """One job's row, read again only when its files changed: the summary is rebuilt after every job."""
    files = (job_dir / "summary.json", job_dir / ".hydra" / "overrides.yaml")
    stats = [path.stat() if path.is_file() else None for path in files]  # a rewrite is a rename: a new inode
    stamps = tuple((st.st_ino, st.st_mtime_ns, st.st_size) if st else None for st in stats)
    if stamps == (None, None):
        return None
    row = _read_row(job_dir, stamps)
    return dict(row) if row is not None else None


@functools.lru_cache(maxsize=4096)
def _read_row(job_dir: Path, stamps: tuple) -> dict[str, Any] | None:
    from trimlab.deploy import rows as deploy_rows
    from trimlab.redaction import redact_overrides

    summary_path, overrides_path = job_dir / "summary.json", job_dir / ".hydra" / "overrides.yaml"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except ValueError:
        summary = {"status": "failed", "error": "summary.json is corrupt"}
    overrides = [str(o) for o in OmegaConf.load(overrides_path)] if overrides_path.is_file() else []
    status = summary.get("status", "failed")
    row = {
        "job": job_dir.name,
        # No summary, or one still saying "running": the job was killed (a failed job always leaves one, see
        # SweepSummary.on_job_end); a resumed sweep runs that trial again.
        "status": "interrupted" if status == "running" or not summary else status,
        "error": summary.get("error") or ("" if summary else "killed before it wrote its summary"),
        "overrides": " ".join(redact_overrides(overrides)),
    }
    row.update({k: (summary.get("metrics") or {}).get(k) for k in METRICS})
    costs = schema.names(schema.declared(summary), where="cost", compared=True)
    row.update({f"cost.{k}": (summary.get("cost") or {}).get(k) for k in costs})
    row.update({f"cost.{k}": v for k, v in deploy_rows.best_columns((summary.get("cost") or {}).get("deploy")).items()})
    row["measured"] = schema.measurement(summary)  # how serving cost was timed: the Pareto plot needs it alike
    row["run_dir"] = str(job_dir.absolute())
    return row


def write_summary(sweep_dir: Path, elsewhere: Iterable[Path] = ()) -> list[dict[str, Any]]:
    """`elsewhere`: this sweep's job dirs outside its sweep dir, where a job's own task_name puts them (as each
    preset does under `-m 'experiment=glob(*)'`); the sweep's summary then still lists every job."""
    from trimlab.report import write_json, write_text

    # Absolute both ways: Hydra gives a job's output dir absolute, while the sweep dir may be relative (its default).
    jobs = {p.absolute() for p in sweep_dir.iterdir() if p.is_dir()}
    jobs |= {Path(p).absolute() for p in elsewhere if Path(p).is_dir()}
    rows = [row for job in sorted(jobs) if (row := job_row(job))]
    rows.sort(key=lambda r: (int(r["job"].split("_")[0]) if r["job"].split("_")[0].isdigit() else 1 << 30, r["job"]))
    failed = sum(r["status"] == "failed" for r in rows)
    interrupted = sum(r["status"] == "interrupted" for r in rows)
    summary = {"jobs": len(rows), "failed": failed, "interrupted": interrupted, "rows": rows}
    results = sweep_dir / "optimization_results.yaml"  # a constrained search's winner (hydra.sweeper.within)
    if results.is_file() and "within" in (search := OmegaConf.load(results)):
        summary["within"] = OmegaConf.to_container(search.within)
    write_json(sweep_dir / "sweep_summary.json", summary)
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))  # a job may add cost figures of its own
    writer = csv.DictWriter(buffer, fieldnames=fields or ["job"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / "sweep_summary.csv", buffer.getvalue())
    return rows


def mark_interrupted(sweep_dir: Path, job_dir: Path, reason: str) -> dict[str, Any]:
    """Record a job a signal cut short as interrupted (its summary may say running or failed) and rewrite the
    sweep summary; a job that had completed keeps its record. Returns the job's summary."""
    from trimlab.report import write_json

    path = job_dir / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        summary = {}
    if summary.get("status") not in ("completed", "interrupted"):  # the job's own record of an interrupt stays
        summary.update(status="interrupted", error=reason)
        write_json(path, summary)
    write_summary(sweep_dir)
    return summary


class SweepSummary(Callback):
    """Registered in train.yaml under hydra.callbacks; acts in multirun only."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if str(config.hydra.mode).endswith("MULTIRUN"):
            started_jobs[int(config.hydra.job.num)] = Path(config.hydra.runtime.output_dir)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode is None or not str(config.hydra.mode).endswith("MULTIRUN"):
            return
        job_summary = Path(config.hydra.runtime.output_dir) / "summary.json"
        if job_return.status.name == "FAILED" and not job_summary.is_file():  # failed before trimlab's own record
            from trimlab.report import write_json

            write_json(job_summary, {"status": "failed", "error": f"{job_return._return_value!r}"})
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir, started_jobs.values())
        failed = [r["job"] for r in rows if r["status"] == "failed"]
        failed_in_sweep.extend(failed)
        from trimlab.sweep_report import report

        # pareto.png, and the sweep's own W&B run with logger=wandb
        report(config, sweep_dir, rows, objective_keys(config))
        # Interrupted rows are records of trials cut short, not failures: a resumed sweep ran them again.
        interrupted = sum(r["status"] == "interrupted" for r in rows)
        counts = f"{len(rows)} jobs, {len(failed)} failed" + (f", {interrupted} interrupted" if interrupted else "")
        log.info("sweep finished: %s; summary: %s", counts, sweep_dir / "sweep_summary.json")
        print(f"sweep: {counts}; summary: {sweep_dir / 'sweep_summary.json'}", flush=True)
