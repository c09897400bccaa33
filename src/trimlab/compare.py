"""trimlab-compare: runs side by side — accuracy beside what they cost — and the accuracy-vs-cost Pareto front.

    trimlab-compare outputs/mnist_cnn outputs/train/sweeps/<sweep> [--sort cost.latency_ms_p50] [--targets]
                    [--csv runs.csv] [--markdown runs.md] [--pareto test/acc:latency_ms_p50 --tolerance 1.0]
    trimlab-compare --mlflow http://127.0.0.1:5000 mnist_cnn      # the runs of an MLflow experiment
    trimlab-compare --wandb my-team/trimlab                       # the runs of a W&B project

Paths are run dirs (with a summary.json) or any dir above them (a sweep, a task's outputs): every summary.json
below is read. A compressed run's cost is its deployed model's; a run measured in deploy targets shows the chosen
variant (`deploy.best...`), and with --targets one row per (run, variant), which the Pareto front then ranks.
Sources mix: one table across sweeps and servers.
Runs that timed serving cost differently (batch sizes, threads, compiled or eager, CPU capability) are marked in
the table, and a Pareto front over a serving cost is refused for them unless --mixed is given.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from trimlab import schema
from trimlab.deploy import rows as deploy_rows
from trimlab.errors import TrimlabError, user_errors
from trimlab.pareto import (  # noqa: F401 - pareto_front and cheapest_good_enough: part of this module's API
    cheapest_good_enough,
    check_alike,
    known_figures,
    measured_labels,
    pareto,
    pareto_front,
)


def check_writable(path: Path, what: str) -> None:
    """Fail before any work when `path` cannot be written. A probe file is made and removed where the file
    would go: permission bits say nothing for root, nor on /proc or a read-only mount."""
    if path.is_dir():
        raise TrimlabError(f"{what} {path} is a directory; pass a file path")
    anchor = path.absolute().parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    try:
        with tempfile.NamedTemporaryFile(dir=anchor, prefix=".probe."):
            pass
    except OSError as err:
        raise TrimlabError(
            f"cannot write {what} {path}: {anchor} is not a writable directory ({err.strerror}); "
            "pass a path in a writable directory"
        ) from err


def find_summaries(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if not path.exists():
            raise TrimlabError(f"{path} does not exist; pass run dirs or sweep dirs")
        here = [path / "summary.json"] if (path / "summary.json").is_file() else sorted(path.rglob("summary.json"))
        if not here:
            raise TrimlabError(f"{path} holds no run summaries (no summary.json below it); pass finished run dirs")
        found += here
    return sorted(set(found))


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for summary_path in find_summaries(paths):
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError as err:
            raise TrimlabError(f"{summary_path} is corrupt ({err}); remove it or re-run that job") from err
        runs.append(row(summary, summary_path.parent))
    return runs


def row(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    metrics, cost = summary.get("metrics") or {}, summary.get("cost") or {}
    out = {
        "run": run_dir.name,
        "task": summary.get("task_name"),
        "status": summary.get("status"),
        "overrides": " ".join(o for o in summary.get("overrides", []) if not o.startswith("hydra.")),
    }
    out.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    out.update({k: v for k, v in cost.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    out.update(deploy_rows.best_columns(cost.get("deploy")))
    out["ledger"] = cost.get("deploy")  # every deploy target's figures, for --targets
    out.update(serving_columns(cost.get("serving")))
    out["measured"] = schema.measurement(summary)
    out["figures"] = schema.added(schema.declared(summary))  # the run's own cost figures, as it declared them
    out["run_dir"] = str(run_dir)
    return out


SERVING = ("usd_per_million", "requests_per_s", "predictions_per_s", "latency_ms_p50", "latency_ms_p99")


def serving_columns(block: dict[str, Any] | None) -> dict[str, Any]:
    """trimlab-loadtest's `cost.serving`: what a million served predictions cost, at what rate and latency."""
    return {f"serving.{key}": block[key] for key in SERVING if isinstance((block or {}).get(key), int | float)}


def numeric_keys(runs: list[dict[str, Any]]) -> list[str]:
    return sorted({k for run in runs for k, v in run.items() if isinstance(v, int | float)})


def check_key(key: str, runs: list[dict[str, Any]], what: str) -> str:
    key = key.removeprefix("cost.").removeprefix("metrics.")
    if not any(key in run for run in runs):
        raise TrimlabError(f"unknown {what} '{key}'; available: {', '.join(numeric_keys(runs))}")
    return key


def columns(runs: list[dict[str, Any]], console: bool = False) -> list[str]:
    """The schema's compared metrics and costs that some run has (those marked `console` in the terminal, where
    a run's own compared figures join them); `measured` when the runs timed serving cost differently."""
    builtin = {f.name for f in schema.BUILTIN}
    shown = [f for f in known_figures(runs) if f.compared and (not console or f.console or f.name not in builtin)]
    present = [f.name for f in shown if any(f.name in r for r in runs)]
    best = [deploy_rows.BEST, *(f"{deploy_rows.BEST}.{k}" for k in deploy_rows.SHOWN[: 1 if console else None])]
    if not any(r.get("target") for r in runs):  # the chosen deploy variant and its figures, unless rows are variants
        present += [key for key in best if any(key in r for r in runs)]
    present += [
        f"serving.{key}" for key in SERVING[: 2 if console else None] if any(f"serving.{key}" in r for r in runs)
    ]
    return ["run", "task", "status", *present, *(["measured"] if measured_labels(runs) else []), "overrides"]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def to_csv(runs: list[dict[str, Any]]) -> str:
    best = [deploy_rows.BEST] if any(deploy_rows.BEST in r for r in runs) else []
    keys = ["run", "task", "status", *best, *numeric_keys(runs), "overrides", "measured", "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(runs)
    return buffer.getvalue()


def to_markdown(runs: list[dict[str, Any]]) -> str:
    keys, labels = columns(runs), measured_labels(runs)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r, k, labels).replace("|", "\\|") for k in keys) + " |" for r in runs]
    return "\n".join([*lines, *legend(labels)]) + "\n"


def cell(run: dict[str, Any], key: str, labels: dict[str, str]) -> str:
    return labels.get(run.get("measured"), "?") if key == "measured" else fmt(run.get(key))


def legend(labels: dict[str, str]) -> list[str]:
    """What each letter of the `measured` column stands for; nothing when the runs measured alike."""
    if not labels:
        return []
    head = "serving cost was measured in different ways (column measured); latencies do not compare across them:"
    return ["", head, *[f"- {letter}: {way}" for way, letter in labels.items()]]


def print_table(runs: list[dict[str, Any]], marked: set[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(runs)} runs" + (" (* on the Pareto front)" if marked else ""))
    keys, labels = columns(runs, console=True), measured_labels(runs)
    for key in keys:
        text = key in ("run", "task", "status", "overrides")
        table.add_column(key, justify="left" if text else "right", no_wrap=True, max_width=48 if text else None)
    for run in runs:
        cells = [cell(run, k, labels) for k in keys]
        cells[0] = ("* " if run.get("key", run["run_dir"]) in marked else "") + cells[0]
        table.add_row(*cells)
    Console(width=200).print(table)
    for line in legend(labels)[1:]:
        print(line)


def gather(args: argparse.Namespace) -> list[dict[str, Any]]:
    from trimlab import remote_runs

    runs = load_runs([Path(p) for p in args.paths]) if args.paths else []
    for uri, experiment in args.mlflow or []:
        runs += remote_runs.mlflow_runs(uri, experiment)
    for project in args.wandb or []:
        runs += remote_runs.wandb_runs(project)
    return runs


def shown_overrides(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's `overrides`: only those that differ between the runs (what a sweep varied); CSV keeps all."""
    tokens = [set(str(r["overrides"]).split()) for r in runs if r.get("overrides")]  # unknown ones don't count
    common = set.intersection(*tokens) if len(tokens) > 1 else set()
    shown = []
    for run in runs:
        kept = [o for o in str(run.get("overrides") or "").split() if o not in common]
        shown.append({**run, "overrides": " ".join(kept)})
    return shown


def pareto_keys(spec: str) -> tuple[str, str]:
    """`METRIC:COST`, both parts given: a plot against a cost the user did not choose answers another question."""
    metric, _, cost = spec.partition(":")
    if not metric.strip() or not cost.strip():
        raise TrimlabError(
            f"--pareto {spec} needs a metric and a cost: use --pareto METRIC:COST, e.g. test/acc:latency_ms_p50"
        )
    return metric.strip(), cost.strip()


def check_outputs(args: argparse.Namespace) -> None:
    """Every file the command will write, checked before reading any run."""
    if args.pareto:
        pareto_keys(args.pareto)
        check_writable(Path(args.png or "pareto.png"), "--png")
    for flag in ("csv", "markdown"):
        if getattr(args, flag):
            check_writable(Path(getattr(args, flag)), f"--{flag}")


def compare(args: argparse.Namespace) -> None:
    from trimlab.report import write_text

    check_outputs(args)
    runs = deploy_rows.per_target(gather(args)) if args.targets else gather(args)
    if args.sort:
        key = check_key(args.sort, runs, "sort key")
        runs.sort(key=lambda r: (r.get(key) is None, r.get(key) or 0), reverse=args.descending)
    marked: set[str] = set()
    if args.pareto:
        metric_key, cost_key = pareto_keys(args.pareto)
        metric, cost = check_key(metric_key, runs, "metric"), check_key(cost_key, runs, "cost")
        if not args.mixed:
            check_alike([r for r in runs if r["status"] == "completed"], cost)
        png = Path(args.png or "pareto.png")
        front, pick = pareto(runs, metric, cost, args.tolerance, png)
        marked = {r.get("key", r["run_dir"]) for r in front}
    if args.csv:
        write_text(Path(args.csv), to_csv(runs))
    if args.markdown:
        write_text(Path(args.markdown), to_markdown(shown_overrides(runs)))
    print_table(shown_overrides(runs), marked)
    if args.pareto:
        print(f"Pareto front ({metric} vs {cost}): {', '.join(r['run'] for r in front)}")
        if pick is not None:
            print(f"cheapest run within {args.tolerance} pt of the best {metric}: {pick['run']} "
                  f"({metric} {pick[metric]:.4f}, {cost} {fmt(pick[cost])}) — {pick['run_dir']}")  # fmt: skip
        print(f"plot: {png.absolute()}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimlab-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help="run dirs or dirs above them (sweeps, task outputs)")
    p.add_argument("--mlflow", nargs=2, action="append", metavar=("URI", "EXPERIMENT"),
                   help="the runs of an MLflow experiment (a server's http:// URI or a file: store)")  # fmt: skip
    p.add_argument("--wandb", action="append", metavar="ENTITY/PROJECT", help="the runs of a W&B project")
    p.add_argument("--targets", action="store_true",
                   help="a row per (run, deploy target variant) instead of a run's best variant")  # fmt: skip
    p.add_argument("--sort", help="a metric or cost key, e.g. test/acc or latency_ms_p50")
    p.add_argument("--descending", action="store_true")
    p.add_argument("--csv", help="write every run's numeric fields to this CSV")
    p.add_argument("--markdown", help="write the table as Markdown")
    p.add_argument("--pareto", metavar="METRIC:COST", help="e.g. test/acc:latency_ms_p50")
    p.add_argument("--tolerance", type=float, default=1.0, help="points of the metric (x100) from the best")
    p.add_argument("--png", help="where the Pareto plot goes (default pareto.png)")
    p.add_argument("--mixed", action="store_true",
                   help="plot a serving cost of runs that measured it differently (the table marks them)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not (args.paths or args.mlflow or args.wandb):
        parser().error("give run dirs, sweep dirs, --mlflow URI EXPERIMENT or --wandb ENTITY/PROJECT")
    with user_errors():
        compare(args)


if __name__ == "__main__":
    main(sys.argv[1:])
