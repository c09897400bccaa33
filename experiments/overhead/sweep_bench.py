"""Per-job overhead of a sweep on Hydra's basic launcher: the time a sweep spends outside its jobs' fit and test.

One `trimlab-train -m` sweep of JOBS tiny jobs (digits, small CNN, 1 epoch) runs in this process, as the
command does, with timestamps taken at each boundary:
- Hydra's callbacks (`on_multirun_start/end`, `on_job_start/end`) and trimlab's `pipeline.train` entry and exit;
- a Lightning callback at fit and test start and end.
Per job, everything is split into:
- launcher: sweep time outside `pipeline.train` (Hydra composing the job's config, its run dir and logging,
  the saved .hydra configs, the callbacks, the sweep summary rewritten after each job), divided by the jobs;
- setup: `pipeline.train` entry to fit start (data, model, trainer, loggers);
- fit + test: Lightning's fit and test;
- report: test end to `pipeline.train` exit (cost measurement, plots, predictions, summary).

Each sweep runs twice, alternating trimlab's basic sweeper (the default) with Hydra's own.

Run: make bench-sweep   (writes experiments/overhead/sweep_results.json; about a minute)
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.experimental.callback import Callback

HERE = Path(__file__).resolve().parent
JOBS = int(os.environ.get("SWEEP_BENCH_JOBS", 10))
EVENTS: list[tuple[str, float]] = []  # (event, perf_counter): shared by every callback instance in the process
TINY = [
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
    "cost.latency_repeats=3", "cost.throughput_repeats=2", "cost.latency_warmup=1",
]  # fmt: skip


def mark(event: str) -> None:
    EVENTS.append((event, time.perf_counter()))


class SweepTimer(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        mark("multirun_start")

    def on_multirun_end(self, config, **kwargs) -> None:
        mark("multirun_end")


class FitTestTimer(pl.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        mark("fit_start")

    def on_test_end(self, trainer, pl_module) -> None:
        mark("test_end")


def timed_train():
    from trimlab import pipeline

    untimed = pipeline.train

    def train(*args, **kwargs):
        mark("train_enter")
        try:
            return untimed(*args, **kwargs)
        finally:
            mark("train_exit")

    pipeline.train = train


def per_job(events: list[tuple[str, float]]) -> dict[str, list[float]]:
    times = {name: [t for e, t in events if e == name] for name in dict(events)}
    enter, leave = times["train_enter"], times["train_exit"]
    jobs = len(enter)
    in_jobs = sum(b - a for a, b in zip(enter, leave, strict=True))
    sweep = times["multirun_end"][0] - times["multirun_start"][0]
    return {
        "launcher_s": [(sweep - in_jobs) / jobs],
        "setup_s": [f - e for e, f in zip(enter, times["fit_start"], strict=True)],
        "fit_test_s": [t - f for f, t in zip(times["fit_start"], times["test_end"], strict=True)],
        "report_s": [x - t for t, x in zip(times["test_end"], leave, strict=True)],
        "job_s": [x - e for e, x in zip(enter, leave, strict=True)],
    }


SWEEPERS = {
    "trimlab_basic": [],  # the default: hydra/sweeper=basic resolves to conf/hydra/sweeper/basic.yaml
    "hydra_basic": ["hydra.sweeper._target_=hydra._internal.core_plugins.basic_sweeper.BasicSweeper"],
}
REPEATS = 2


def one_sweep(bench, train_cli, extra: list[str]) -> dict:
    bench.EVENTS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = [
            "trimlab-train", "-m", f"seed=range(1,{JOBS + 1})", *TINY, f"hydra.sweep.dir={tmp}/sweep",
            "+callbacks.fit_test_timer._target_=sweep_bench.FitTestTimer",
            "+hydra.callbacks.sweep_timer._target_=sweep_bench.SweepTimer", *extra,
        ]  # fmt: skip
        bench.mark("command_start")
        train_cli.main()
        bench.mark("command_end")
    phases = per_job(bench.EVENTS)
    at = dict(bench.EVENTS)  # these events happen once
    return {
        "command_wall_s": round(at["command_end"] - at["command_start"], 2),
        # once per sweep: Hydra's start and trimlab's preflight (each swept value composed once) before job 1
        "before_first_job_s": round(at["multirun_start"] - at["command_start"], 2),
        **{f"{k}_median": round(statistics.median(v), 4) for k, v in phases.items()},
        "per_job": {k: [round(x, 4) for x in v] for k, v in phases.items()},
    }


def main() -> None:
    sys.path.insert(0, str(HERE))  # the callbacks are instantiated by name, sweep_bench.<Class>: one module
    os.environ.setdefault("WANDB_MODE", "offline")
    import sweep_bench as bench

    from trimlab import train as train_cli

    bench.timed_train()
    runs = {name: [] for name in SWEEPERS}
    for _ in range(REPEATS):  # alternated, so drift in the machine's speed hits both alike
        for name, extra in SWEEPERS.items():
            runs[name].append(one_sweep(bench, train_cli, extra))
    result = {
        "jobs": JOBS,
        "launcher_s": {name: [r["launcher_s_median"] for r in rs] for name, rs in runs.items()},
        "runs": runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "date": time.strftime("%Y-%m-%d"),
    }
    (HERE / "sweep_results.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, rs in runs.items():
        print(name, json.dumps({k: v for k, v in rs[-1].items() if k != "per_job"}))
    print("launcher overhead per job, s:", json.dumps(result["launcher_s"]))


if __name__ == "__main__":
    main()
