"""make bench-train: wall time to a stated validation accuracy, for a plain PyTorch loop, trimlab's default and
trimlab with its best `speedup` recipe, on four tasks, three seeds each, in alternation in one command.

    python experiments/training/bench.py                  # every task (needs TRIMLAB_DATA for all but digits)
    python experiments/training/bench.py --tasks digits   # one task
    python experiments/training/bench.py --seeds 1        # one seed

For each seed, each task runs its three arms one after the other (plain, default, recipe), so the machine's drift
between minutes falls on all three alike; ratios are paired by seed (arm ÷ arm of the same task and seed), then
their geometric mean is taken. Train time counts from the fit's first batch to its end, validation included, on
every side (trimlab's `cost.train_time_s` and `time_to_target_s`, the plain loop's own clock); process start-up
and the report after the fit are outside it. Test accuracy is of the weights with the best val/loss (trimlab's
checkpoint; the plain loop keeps them the same way). Writes results.json beside this file, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent
QUIET = ["trainer.enable_progress_bar=false", "deploy=none", "cost.latency_repeats=2", "cost.throughput_repeats=1"]
# task → (the run's overrides: data, model, schedule, sized to fit the benchmark's time; the target; the recipe:
# the method of conf/speedup/ that gained most in a one-seed trial of each, experiments/training/README.md)
TASKS = {
    "digits": ([], "val/acc:0.97", ["speedup=[large_batch]"]),
    "mnist": (["experiment=mnist_cnn", "data.labelled_fraction=0.2"], "val/acc:0.97", ["speedup=[channels_last]"]),
    "fsdd": (["experiment=fsdd_cnn", "trainer.max_epochs=12"], "val/acc:0.95", ["speedup=[feature_cache]"]),
    "sst2": (["experiment=sst2_transformer", "data.labelled_fraction=0.25"], "val/acc:0.74",
             ["speedup=[large_batch]"]),
}  # fmt: skip


def run(args: list[str]) -> None:
    print("$", " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args)), flush=True)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{result.stderr[-3000:]}")


def plain(overrides: list[str], target: str, out: Path) -> dict:
    run([sys.executable, str(HERE / "plain.py"), *overrides, "--target", target, "--out", str(out)])
    result = json.loads(out.read_text())
    return {key: result[key] for key in ("time_to_target_s", "train_time_s", "test_acc", "val_curve")}


def trimlab(overrides: list[str], target: str, run_dir: Path) -> dict:
    run([str(BIN / "trimlab-train"), *overrides, *QUIET, f"cost.target={target}", f"hydra.run.dir={run_dir}"])
    summary = json.loads((run_dir / "summary.json").read_text())
    cost = summary["cost"]
    return {"time_to_target_s": cost["time_to_target_s"], "train_time_s": cost["train_time_s"],
            "test_acc": summary["metrics"]["test/acc"], "val_curve": cost["val_curve"],
            "speedup": summary.get("speedup")}  # fmt: skip


def paired(rows: list[dict], top: str, bottom: str, key: str) -> float | None:
    """Geometric mean over seeds of rows[top][key] / rows[bottom][key]; None when an arm missed its target."""
    ratios = [r[top][key] / r[bottom][key] for r in rows if r[top][key] and r[bottom][key]]
    return round(math.exp(statistics.fmean(math.log(x) for x in ratios)), 4) if len(ratios) == len(rows) else None


def summarise(rows: list[dict]) -> dict:
    arms = ("plain", "default", "recipe")
    return {
        **{f"{arm}_{key}": [r[arm][key] for r in rows] for arm in arms for key in ("time_to_target_s", "test_acc")},
        "default_vs_plain_time_to_target": paired(rows, "default", "plain", "time_to_target_s"),
        "recipe_vs_default_time_to_target": paired(rows, "recipe", "default", "time_to_target_s"),
        "recipe_vs_default_train_time": paired(rows, "recipe", "default", "train_time_s"),
        "recipe_minus_default_test_acc_pt": round(100 * statistics.fmean(r["recipe"]["test_acc"]
                                                                         - r["default"]["test_acc"] for r in rows), 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    from trimlab.report import cpu_capability, cpu_model

    tasks = [t for t in args.tasks.split(",") if t]
    results = {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "seeds": args.seeds, "tasks": {}}
    rows: dict[str, list[dict]] = {task: [] for task in tasks}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            for task in tasks:
                overrides, target, recipe = TASKS[task]
                base = [*overrides, f"seed={seed}"]
                where = Path(tmp) / f"{task}-{seed}"
                rows[task].append({
                    "seed": seed,
                    "plain": plain(base, target, Path(f"{where}-plain.json")),
                    "default": trimlab(base, target, Path(f"{where}-default")),
                    "recipe": trimlab([*base, *recipe], target, Path(f"{where}-recipe")),
                })  # fmt: skip
                results["tasks"][task] = {"overrides": overrides, "target": target, "recipe": recipe,
                                          **summarise(rows[task]), "runs": rows[task]}  # fmt: skip
                Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # what has run, if a later one fails
    for task, figures in results["tasks"].items():
        print(f"{task} (target {figures['target']}, recipe {' '.join(figures['recipe'])}): default/plain "
              f"{figures['default_vs_plain_time_to_target']}, recipe/default "
              f"{figures['recipe_vs_default_time_to_target']} (train time {figures['recipe_vs_default_train_time']}),"
              " test acc recipe - default "
              f"{figures['recipe_minus_default_test_acc_pt']} pt")  # fmt: skip
    print(args.out)


if __name__ == "__main__":
    main()
