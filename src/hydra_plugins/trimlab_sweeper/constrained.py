"""The cheapest model within tolerance of the baseline (`hydra.sweeper.within`, hparams_search=cheapest_within).

The uncompressed baseline (`within.baseline`, e.g. `[compression=none]`) runs first, as trial 0. Every trial then
reads `within.metric` from its run's summary (val/acc by default: the search selects on the validation split,
the test split is only reported) and gets one optuna constraint, feasible when <= 0:

    constraint = 100 * (baseline's metric - trial's metric) - tolerance_pt

It is set with optuna's `Trial.set_constraint`, which TPE and NSGA-II model; the objective itself is the cost
(`optimized_metric`). The sweep stops once `patience` finished trials in a row bring no cheaper feasible model.
The winner is the cheapest feasible trial: its number, values, metric and run dir go to optimization_results.yaml
and sweep_summary.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trimlab.errors import fail

ATTRS = ("metric", "run_dir")  # a trial's user attrs that a repeat answered from it copies, with its constraint
KEY = "within_tolerance"


def constraint(trial: Any) -> float:
    """A completed trial without a recorded metric counts as infeasible."""
    return float(trial.constraints.get(KEY, math.inf))


class Within:
    # A plain class: Hydra's plugin scan loads this module outside sys.modules, where @dataclass fails.
    def __init__(self, metric: str = "val/acc", tolerance_pt: float = 1.0, baseline: Any = (),
                 patience: int | None = None) -> None:  # fmt: skip
        self.metric, self.tolerance_pt, self.patience = str(metric), float(tolerance_pt), patience
        self.baseline = [str(item) for item in baseline or ()]

    @classmethod
    def of(cls, node: Any) -> Within | None:
        if node is None:
            return None
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        unknown = set(values) - {"metric", "tolerance_pt", "baseline", "patience"}
        if unknown:
            fail(f"hydra.sweeper.within has no {', '.join(sorted(unknown))}; it takes metric, tolerance_pt, "
                 "baseline and patience")  # fmt: skip
        return cls(**values)

    def baseline_params(self, space: dict[str, Any]) -> dict[str, Any]:
        """The baseline's values of the search space's parameters, each one of its choices."""
        params = {}
        for item in self.baseline:
            key, _, text = item.partition("=")
            if key not in space or not hasattr(space[key], "choices"):
                fail(f"hydra.sweeper.within.baseline: {key!r} is not a choice() parameter of the search space; "
                     f"name parameters among {', '.join(space)}")  # fmt: skip
            picked = [choice for choice in space[key].choices if str(choice) == text.strip()]
            if not picked:
                fail(f"hydra.sweeper.within.baseline: {item!r} is not among {key}'s choices "
                     f"{list(space[key].choices)}")  # fmt: skip
            params[key] = picked[0]
        if not params:
            fail("hydra.sweeper.within.baseline is empty; name the uncompressed baseline, e.g. [compression=none]")
        return params

    def enqueue_baseline(self, study: Any, space: dict[str, Any]) -> None:
        """A fresh study's first trial is the baseline; a resumed study has it already (run, or queued again)."""
        params = self.baseline_params(space)
        if not study.trials:
            study.enqueue_trial(params, user_attrs={"baseline": True})

    def baseline_value(self, study: Any) -> float | None:
        done = [t for t in study.trials if t.user_attrs.get("baseline") and t.state.name == "COMPLETE"]
        return done[0].user_attrs.get("metric") if done else None

    def record(self, study: Any, trial: Any, run_dir: Path) -> None:
        """The trial's metric, constraint and run dir as user attrs, set before the trial is told."""
        summary = json.loads((run_dir / "summary.json").read_text())
        value = (summary.get("metrics") or {}).get(self.metric)
        is_baseline = study._storage.get_trial(trial._trial_id).user_attrs.get("baseline")
        reference = value if is_baseline else self.baseline_value(study)
        if value is None or reference is None:
            return
        trial.set_user_attr("metric", float(value))
        trial.set_user_attr("run_dir", str(run_dir.absolute()))
        trial.set_constraint(KEY, round(100 * (reference - value) - self.tolerance_pt, 6))

    def check_baseline(self, study: Any) -> None:
        """Without the baseline's metric there is nothing to be within: stop with one line."""
        ran = [t for t in study.trials if t.user_attrs.get("baseline") and t.state.name in ("COMPLETE", "FAIL")]
        if ran and self.baseline_value(study) is None and not ran[-1].system_attrs.get("interrupted"):
            fail(f"the baseline trial {ran[-1].number} ({', '.join(self.baseline)}) failed or recorded no "
                 f"{self.metric}: cheapest_within needs it; see its run dir, fix it, and run again with a new "
                 "hydra.sweeper.study_name")  # fmt: skip

    def feasible(self, trials: list[Any]) -> list[Any]:
        return [t for t in trials if t.state.name == "COMPLETE" and constraint(t) <= 0]

    def winner(self, trials: list[Any], maximize: bool) -> Any | None:
        """The cheapest feasible trial (the first of equals: the baseline wins ties, then earlier trials)."""
        feasible = self.feasible(trials)
        if not feasible:
            return None
        return min(feasible, key=lambda t: (-t.value if maximize else t.value, t.number))

    def stalled(self, trials: list[Any], maximize: bool) -> bool:
        """Whether the last `patience` finished trials brought no cheaper feasible model."""
        if not self.patience:
            return False
        best, since = None, 0
        for trial in trials:
            feasible = trial.state.name == "COMPLETE" and constraint(trial) <= 0
            value = (-trial.value if maximize else trial.value) if feasible else None
            if value is not None and (best is None or value < best):
                best, since = value, 0
            else:
                since += 1
        return best is not None and since >= self.patience

    def summary(self, trials: list[Any], maximize: bool) -> dict[str, Any]:
        """The winner and the counts, as optimization_results.yaml and sweep_summary.json carry them."""
        best = self.winner(trials, maximize)
        judged = [t for t in trials if KEY in t.constraints]
        return {
            "metric": self.metric, "tolerance_pt": self.tolerance_pt, "baseline": self.baseline,
            "baseline_value": next((t.user_attrs["metric"] for t in trials if t.user_attrs.get("baseline")
                                    and "metric" in t.user_attrs), None),
            "feasible": len(self.feasible(trials)), "infeasible": len(judged) - len(self.feasible(trials)),
            "winner": None if best is None else {
                "number": best.number, "value": best.value, self.metric: best.user_attrs["metric"],
                "params": best.params, "run_dir": best.user_attrs["run_dir"]},
        }  # fmt: skip

    def announce(self, winner: dict[str, Any] | None, objective: str) -> None:
        if winner is None:
            print(f"sweep: no trial within {self.tolerance_pt} pt of the baseline's {self.metric}", flush=True)
            return
        print(f"sweep: cheapest within {self.tolerance_pt} pt of the baseline's {self.metric}: trial "
              f"{winner['number']} ({objective} {winner['value']:g}, {self.metric} {winner[self.metric]:.4f}); "
              f"run dir: {winner['run_dir']}", flush=True)  # fmt: skip
