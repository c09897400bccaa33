"""hparams_search=cheapest_within on MNIST, three sampler seeds, against the 24-trial NSGA-II search (trials.csv).

    TRIMLAB_DATA=../shared/data python experiments/pareto/cheapest_within.py [--seeds 1 2 3] [--trials 12]

Each seed runs one constrained search over the space of trials.csv (compression stages, their knobs, the CNN
widths): the smallest deployable file (`cost.size_bytes`) whose val/acc stays within 1 pt of the uncompressed
baseline's (widths 32-64-128), the baseline first. The file size is deterministic (so is training, under the
seed): the comparison with the NSGA-II search does not depend on this machine's timing noise. Writes
cheapest_within.json beside this file, with the CPU, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent
SEARCH = [
    "experiment=mnist_cnn", "hparams_search=cheapest_within", "trainer.max_epochs=1",
    "++compression.prune_structured.epochs=1", "++compression.prune.epochs=1", "trainer.enable_progress_bar=false",
    'model.widths=choice("[16,32,64]","[32,64,128]")',  # searched beside the stages, as in trials.csv
    'hydra.sweeper.within.baseline=["compression=none","model.widths=[32,64,128]"]',
]  # fmt: skip


def nsga2_reference(tolerance_pt: float = 1.0) -> dict:
    """The 24-trial NSGA-II search's smallest model within `tolerance_pt` of its baseline's test accuracy."""
    rows = [r for r in csv.DictReader((HERE / "trials.csv").open()) if r["status"] == "completed"]
    baseline = next(float(r["test/acc"]) for r in rows if "compression=none" in r["overrides"]
                    and r["overrides"].endswith("model.widths=[32,64,128]"))  # fmt: skip
    within = [r for r in rows if 100 * (baseline - float(r["test/acc"])) <= tolerance_pt]
    best = min(within, key=lambda r: int(r["size_bytes"]))
    return {"trials": len(rows), "baseline_test_acc": baseline, "run": best["run"],
            "size_bytes": int(best["size_bytes"]), "test/acc": float(best["test/acc"])}  # fmt: skip


def search(seed: int, trials: int, out: Path, patience: str | None) -> dict:
    name = f"cheapest_within_seed{seed}"
    command = [str(BIN / "trimlab-train"), *SEARCH, f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.seed={seed}",
               f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={out / name}"]  # fmt: skip
    command += [f"hydra.sweeper.within.patience={patience}"] if patience is not None else []
    print("$", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / name / "sweep_summary.json").read_text())
    rows, within = summary["rows"], summary["within"]
    winner = next(r for r in rows if r["run_dir"] == within["winner"]["run_dir"])
    baseline = rows[0]
    return {
        "seed": seed, "minutes": round((time.monotonic() - started) / 60, 1), "trials_run": len(rows),
        "feasible": within["feasible"], "infeasible": within["infeasible"],
        "baseline": {k: baseline[k] for k in ("val/acc", "test/acc", "cost.size_bytes")},
        "winner": {"trial": within["winner"]["number"],
                   "params": " ".join(f"{k.lstrip('+')}={v}" for k, v in within["winner"]["params"].items()),
                   **{k: winner[k] for k in ("val/acc", "test/acc", "cost.size_bytes")}},
        "rows": [{k: r.get(k) for k in ("job", "overrides", "val/acc", "test/acc", "cost.size_bytes")} for r in rows],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "cheapest_within")
    parser.add_argument("--patience", default=None, help="hydra.sweeper.within.patience (the preset's: 6)")
    args = parser.parse_args()
    import torch

    reference = nsga2_reference()
    results = {
        "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "nsga2": reference, "searches": [search(seed, args.trials, args.out, args.patience) for seed in args.seeds],
    }  # fmt: skip
    (HERE / "cheapest_within.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nNSGA-II, {reference['trials']} trials: {reference['size_bytes']:,} B at test acc "
          f"{reference['test/acc']:.4f} (baseline {reference['baseline_test_acc']:.4f})\n")  # fmt: skip
    print("| seed | trials run | feasible / infeasible | winner | val acc | test acc (baseline) | size B | ÷ NSGA-II |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    for s in results["searches"]:
        w, b = s["winner"], s["baseline"]
        print(f"| {s['seed']} | {s['trials_run']} | {s['feasible']} / {s['infeasible']} | `{w['params']}` "
              f"({w['trial']}) | {w['val/acc']:.4f} | {w['test/acc']:.4f} ({b['test/acc']:.4f})"
              f" | {w['cost.size_bytes']:,.0f} | {w['cost.size_bytes'] / reference['size_bytes']:.2f} |")  # fmt: skip


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
