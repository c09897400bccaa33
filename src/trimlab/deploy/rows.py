"""The deploy ledger (`cost.deploy`) as flat table rows: the best variant's figures beside a run's own (sweep
summaries, trimlab-compare, the sweeper's objectives), and one row per (run, target variant) for
`trimlab-compare --targets`, so a Pareto front can hold each pair. Reads summaries and tracked-run values alike;
imports no runtime."""

from __future__ import annotations

from typing import Any

# The ledger figures a variant's entry holds (besides its test/* metrics), as sweep objectives may name them.
FIGURES = ("latency_ms_p50", "latency_ms_p95", "throughput_samples_per_s", "usd_per_million", "size_bytes",
           "load_time_s")  # fmt: skip
BEST = "deploy.best"  # the row key of the chosen variant's name; its figures are `deploy.best.<figure>`
SHOWN = ("latency_ms_p50", "throughput_samples_per_s", "test/acc")


def is_figure(name: str) -> bool:
    return name in FIGURES or name.startswith("test/")


def best_columns(ledger: dict[str, Any] | None) -> dict[str, Any]:
    """`deploy.best` (the chosen `target/variant`) and `deploy.best.<figure>` for each of its numbers."""
    best = (ledger or {}).get("best") or {}
    out: dict[str, Any] = {BEST: best["variant"]} if best.get("variant") else {}
    out.update({f"{BEST}.{k}": v for k, v in best.items() if is_figure(k) and isinstance(v, int | float)})
    return out


def variants(ledger: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`target/variant` → entry, for the variants that were measured (not `unsupported`)."""
    out = {}
    for target, entries in (ledger or {}).items():
        if target == "best" or not isinstance(entries, dict):
            continue
        out.update({f"{target}/{name}": e for name, e in entries.items() if (e or {}).get("status", "ok") == "ok"})
    return out


def ledger_from_flat(values: dict[str, Any]) -> dict[str, Any]:
    """The ledger rebuilt from a tracked run's logged keys (`cost/deploy/<target>/<variant>/<figure>`)."""
    ledger: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split("/", 4)
        if len(parts) == 5 and parts[:2] == ["cost", "deploy"] and is_figure(parts[4]):
            ledger.setdefault(parts[2], {}).setdefault(parts[3], {})[parts[4]] = value
        elif len(parts) >= 4 and parts[:3] == ["cost", "deploy", "best"] and is_figure("/".join(parts[3:])):
            ledger.setdefault("best", {})["/".join(parts[3:])] = value
    return ledger


def per_target(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, measured variant): the variant's metrics and figures in place of the run's own, its name
    in `target`. A run without a ledger keeps its one row (its cost is inductor's, or eager torch's)."""
    rows = []
    for run in runs:
        measured = variants(run.get("ledger"))
        if not measured:
            rows.append({**run, "target": "", "key": run["run_dir"]})
            continue
        for name, entry in measured.items():
            figures = {k: v for k, v in entry.items() if is_figure(k)}
            rows.append({**run, **figures, "run": f"{run['run']} {name}", "target": name,
                         "key": f"{run['run_dir']} {name}"})  # fmt: skip
    return rows
