"""Markdown tables for experiments/compression/README.md, from run dirs' summary.json files.

python experiments/compression/tables.py stages <run dir>...          # baseline → each stage, with ratios
python experiments/compression/tables.py paired --a <dirs> --b <dirs>  # two arms over seeds, paired test
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from scipy.stats import binomtest, ttest_rel


def load(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def stages(run_dirs: list[str]) -> None:
    for run_dir in run_dirs:
        summary = load(run_dir)
        metrics, cost = summary["metrics"], summary["cost"]
        base = cost["baseline"]
        print(f"\n`{summary['task_name']}` ({Path(run_dir).name}), threads {base['threads']}\n")
        print("| model | test acc | Δ acc (pt) | latency p50 ms, compiled (eager) | throughput /s @64, "
              "compiled (eager) | size B | weights B | params | nonzero | MACs/sample |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        rows = [("baseline", metrics["baseline"], base)]
        rows += [(name, metrics["after"][name], ledger) for name, ledger in cost["after"].items()]
        for name, scores, ledger in rows:
            delta = 100 * (scores["test/acc"] - metrics["baseline"]["test/acc"])
            macs = ledger.get("flops_per_sample")
            print(
                f"| {name} | {scores['test/acc']:.4f} | {delta:+.2f} | {ledger['latency_ms_p50']:.3f} "
                f"({ledger['latency_ms_p50_eager']:.3f}) | {ledger['throughput_samples_per_s']:,.0f} "
                f"({ledger['throughput_samples_per_s_eager']:,.0f}) | {ledger['size_bytes']:,} | "
                f"{ledger.get('weights_bytes', 0):,} | {ledger.get('params') or 0:,} | "
                f"{ledger.get('nonzero_params') or 0:,} | {f'{macs // 2:,}' if macs else '–'} |"
            )
        print("\nRatios against the baseline (compiled; eager in brackets):\n")
        print("| after | latency ×, bs 1 | throughput ×, bs 64 | size × | weights × |")
        print("|---|---|---|---|---|")
        for name, ledger in cost["after"].items():
            print(
                f"| {name} | {base['latency_ms_p50'] / ledger['latency_ms_p50']:.2f} "
                f"({base['latency_ms_p50_eager'] / ledger['latency_ms_p50_eager']:.2f}) | "
                f"{ledger['throughput_samples_per_s'] / base['throughput_samples_per_s']:.2f} "
                f"({ledger['throughput_samples_per_s_eager'] / base['throughput_samples_per_s_eager']:.2f}) | "
                f"{base['size_bytes'] / ledger['size_bytes']:.2f} | "
                f"{base['weights_bytes'] / ledger['weights_bytes']:.2f} |"
            )


def predictions(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(Path(run_dir) / "test_predictions.npz")
    return data["probs"].argmax(1), data["targets"]


def paired(arm_a: list[str], arm_b: list[str]) -> None:
    """Seeds pair up in the order given. Per seed: McNemar's exact test on the sentences one arm gets right and
    the other wrong; over seeds: mean ± std and a paired t-test on accuracy."""
    acc_a, acc_b = [], []
    print("| seed pair | acc A | acc B | A right, B wrong | B right, A wrong | McNemar p |")
    print("|---|---|---|---|---|---|")
    for run_a, run_b in zip(arm_a, arm_b, strict=True):
        (pred_a, target), (pred_b, target_b) = predictions(run_a), predictions(run_b)
        assert np.array_equal(target, target_b), "the two runs were tested on different examples"
        right_a, right_b = pred_a == target, pred_b == target
        only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        acc_a.append(right_a.mean())
        acc_b.append(right_b.mean())
        names = f"{Path(run_a).name} / {Path(run_b).name}"
        print(f"| {names} | {acc_a[-1]:.4f} | {acc_b[-1]:.4f} | {only_a} | {only_b} | {p:.3f} |")
    diff = [100 * (a - b) for a, b in zip(acc_a, acc_b, strict=True)]
    t = ttest_rel(acc_a, acc_b) if len(acc_a) > 1 else None
    print(f"\nA: {statistics.mean(acc_a):.4f} ± {statistics.stdev(acc_a):.4f}; B: {statistics.mean(acc_b):.4f} ± "
          f"{statistics.stdev(acc_b):.4f}; A − B = {statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f} pt "
          f"(paired t-test p = {t.pvalue:.3f})" if t else "")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stages").add_argument("run_dirs", nargs="+")
    pair = sub.add_parser("paired")
    pair.add_argument("--a", nargs="+", required=True)
    pair.add_argument("--b", nargs="+", required=True)
    args = parser.parse_args()
    stages(args.run_dirs) if args.command == "stages" else paired(args.a, args.b)


if __name__ == "__main__":
    main()
