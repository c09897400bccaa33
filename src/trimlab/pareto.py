"""The accuracy-vs-cost Pareto front of a set of runs, the cheapest run within a tolerance of the best, their
plot, and the check that the runs timed serving cost alike (trimlab-compare and the sweep report share them).

A run is a flat row: metric and cost keys beside `measured` (how serving cost was timed, see
`schema.measurement`) and `figures` (the cost figures the run added itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimlab import schema
from trimlab.errors import TrimlabError


def known_figures(runs: list[dict[str, Any]]) -> tuple[schema.Figure, ...]:
    """The schema's figures, then the cost figures the runs added themselves (the first declaration wins)."""
    added = {f.name: f for run in runs for f in reversed(run.get("figures") or ())}
    return schema.BUILTIN + tuple(added.values())


def higher_is_better(cost: str, runs: list[dict[str, Any]]) -> bool:
    if cost.startswith("serving."):  # trimlab-loadtest's figures: only the rate is better higher
        return cost in ("serving.requests_per_s", "serving.predictions_per_s")
    figure = schema.find(cost.removeprefix("deploy.best."), known_figures(runs))  # a deploy variant's figure too
    return figure is not None and figure.better == "higher"


def measured_labels(runs: list[dict[str, Any]]) -> dict[str, str]:
    """A letter for each way the runs measured serving cost; empty when they all did it alike."""
    ways = list(dict.fromkeys(r["measured"] for r in runs if r.get("measured")))
    return {way: chr(ord("A") + i) for i, way in enumerate(ways)} if len(ways) > 1 else {}


def check_alike(runs: list[dict[str, Any]], cost: str) -> None:
    """Refuse to rank runs by a serving cost they timed differently: int8 on AVX-512 against fp32 on AVX2, a
    compiled model against an eager one, 4 threads against 16, say nothing about the models themselves."""
    figure = schema.find(cost, known_figures(runs))
    labels = measured_labels(runs)
    if labels and (figure is None or figure.phase == "serving"):
        ways = " | ".join(f"{letter}: {way}" for way, letter in labels.items())
        raise TrimlabError(
            f"these runs measured serving cost differently, so their {cost} does not compare ({ways}); "
            "compare runs measured alike, a training cost, or pass --mixed to plot them anyway"
        )


def pareto_front(runs: list[dict[str, Any]], metric: str, cost: str) -> list[dict[str, Any]]:
    """Runs no other run beats on both: a higher (or equal) metric at a lower (or equal) cost, one strictly."""
    sign = -1 if higher_is_better(cost, runs) else 1
    points = [r for r in runs if r.get(metric) is not None and r.get(cost) is not None]

    def dominates(a: dict, b: dict) -> bool:
        better_or_equal = a[metric] >= b[metric] and sign * a[cost] <= sign * b[cost]
        return better_or_equal and (a[metric] > b[metric] or sign * a[cost] < sign * b[cost])

    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda r: sign * r[cost])


def cheapest_good_enough(runs: list[dict[str, Any]], metric: str, cost: str, tolerance_pt: float) -> dict | None:
    """The cheapest run whose metric is within `tolerance_pt` points (×100) of the best run's."""
    points = [r for r in runs if r.get(metric) is not None and r.get(cost) is not None]
    if not points:
        return None
    best = max(r[metric] for r in points)
    good = [r for r in points if 100 * (best - r[metric]) <= tolerance_pt + 1e-9]
    sign = -1 if higher_is_better(cost, runs) else 1
    return min(good, key=lambda r: sign * r[cost])


def plot_pareto(runs: list[dict], front: list[dict], pick: dict | None, metric: str, cost: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    points = [r for r in runs if r.get(metric) is not None and r.get(cost) is not None]
    ax.scatter([r[cost] for r in points], [r[metric] for r in points], c="lightgray", label="runs")
    ax.plot([r[cost] for r in front], [r[metric] for r in front], "o-", c="tab:blue", label="Pareto front")
    if pick is not None:
        ax.scatter([pick[cost]], [pick[metric]], s=160, facecolors="none", edgecolors="tab:red", linewidths=2,
                   label=f"cheapest good enough: {pick['run']}")  # fmt: skip
    ax.set_xlabel(f"{cost} ({'higher' if higher_is_better(cost, runs) else 'lower'} is better)")
    ax.set_ylabel(metric)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto(runs: list[dict], metric: str, cost: str, tolerance_pt: float, png: Path) -> tuple[list, dict | None]:
    """The front among completed runs, the cheapest good-enough run, and the plot of both."""
    completed = [r for r in runs if r["status"] == "completed"]
    front = pareto_front(completed, metric, cost)
    pick = cheapest_good_enough(completed, metric, cost, tolerance_pt)
    plot_pareto(completed, front, pick, metric, cost, png)
    return front, pick
