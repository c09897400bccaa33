"""What trimlab costs over a plain PyTorch loop, and what it costs to start.

Same model (conf/model/cnn.yaml), data (digits, no augmentation), seed, batch size, optimizer, schedule and number
of optimizer steps; the two trainers alternate, REPEATS times each, in one process. Step time is measured the
same way on both sides: from the start of a batch to the end of its optimizer/scheduler step.
Start-up: `trimlab-train` from launch to the end of its first optimizer step, against the bare import of the
libraries it stands on (`python -c "import lightning, hydra, torchmetrics"`).

Run: make bench-overhead   (writes experiments/overhead/results.json)
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from trimlab import rundir
from trimlab.factory import build
from trimlab.launch import config_dir
from trimlab.pipeline import train
from trimlab.schedules import cosine

HERE = Path(__file__).resolve().parent
STEPS, REPEATS, SEED = 300, 5, 42
OVERRIDES = [
    f"seed={SEED}", f"trainer.max_steps={STEPS}", "trainer.max_epochs=-1", "data.augment=false",
    "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "callbacks.early_stopping=null",
    "cost.latency_repeats=3", "cost.throughput_repeats=2",
]  # fmt: skip


def compose_cfg(output_dir: Path, *extra: str):
    rundir.register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*OVERRIDES, f"paths.output_dir={output_dir}", *extra])


def plain_loop(cfg) -> tuple[list[float], float]:
    """The loop a user would write by hand, from the same config-built model and data."""
    pl.seed_everything(SEED, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    datamodule, task = build(cfg)
    model = task.backbone.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.task.optimizer.lr, weight_decay=cfg.task.optimizer.weight_decay
    )
    scheduler = cosine(optimizer, STEPS, cfg.task.scheduler.warmup_fraction, cfg.task.scheduler.min_lr_ratio)
    loader, times, step, epoch = datamodule.train_dataloader(), [], 0, 0
    while step < STEPS:
        loader.sampler.set_epoch(epoch)
        for inputs, target in loader:
            start = time.perf_counter()
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), target)
            loss.backward()
            optimizer.step()
            scheduler.step()
            times.append(time.perf_counter() - start)
            step += 1
            if step == STEPS:
                break
        epoch += 1
    return times, float(loss)


def trimlab_run(cfg, run_dir: Path) -> tuple[float, float]:
    summary = train(cfg, run_dir, f"{run_dir.name:0>8}"[-8:])
    return summary["cost"]["step_time_ms_median"] / 1e3, summary["metrics"]["train/loss_final"]


def startup(repeats: int) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline"}
    bin_dir = Path(sys.executable).parent
    imports, trimlab = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.time()
            subprocess.run([sys.executable, "-c", "import lightning, hydra, torchmetrics"], check=True, env=env)
            imports.append(time.time() - start)
            start = time.time()
            out = subprocess.run(
                [str(bin_dir / "trimlab-train"), "trainer.max_steps=1", "trainer.max_epochs=-1",
                 "trainer.enable_progress_bar=false", "cost.latency_repeats=1", "cost.throughput_repeats=1"],
                check=True, env={**env, "TRIMLAB_OUTPUT": tmp}, capture_output=True, text=True,
            )  # fmt: skip
            summary = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
            trimlab.append(summary["cost"]["first_step_unix"] - start)
    return {
        "import_s_median": statistics.median(imports),
        "trimlab_to_first_step_s_median": statistics.median(trimlab),
        "startup_ratio": statistics.median(trimlab) / statistics.median(imports),
        "import_s": imports,
        "trimlab_to_first_step_s": trimlab,
    }


def compare(tmp: Path, tag: str, *model: str) -> dict:
    """Plain loop, trimlab, trimlab without train metrics: alternating, REPEATS times, one model."""
    plain_medians, trimlab_medians, lean_medians, plain_losses, trimlab_losses = [], [], [], [], []
    for repeat in range(REPEATS):
        cfg = compose_cfg(tmp / f"{tag}{repeat}", *model)
        times, loss = plain_loop(cfg)
        plain_medians.append(statistics.median(times[1:]))
        plain_losses.append(loss)
        step, loss = trimlab_run(cfg, tmp / f"{tag}{repeat}")
        trimlab_medians.append(step)
        trimlab_losses.append(loss)
        lean = compose_cfg(tmp / f"{tag}lean{repeat}", *model, "task.train_metrics=false")
        lean_medians.append(trimlab_run(lean, tmp / f"{tag}lean{repeat}")[0])
    plain, ours = statistics.median(plain_medians), statistics.median(trimlab_medians)

    def paired(times: list[float]) -> float:
        # Each repeat's ratio to the plain loop run just before it, then the median: drift in machine speed
        # between repeats (seen here: the plain loop alone ranges 4.7-8.2 ms) cancels within a pair.
        return statistics.median(t / p for t, p in zip(times, plain_medians, strict=True))

    return {
        "ratio": paired(trimlab_medians),
        "ratio_without_train_metrics": paired(lean_medians),
        "ratio_of_medians": ours / plain,
        "loss_abs_diff": abs(statistics.median(trimlab_losses) - statistics.median(plain_losses)),
        "plain_step_ms_median": plain * 1e3,
        "trimlab_step_ms_median": ours * 1e3,
        "plain_step_ms_per_repeat": [t * 1e3 for t in plain_medians],
        "trimlab_step_ms_per_repeat": [t * 1e3 for t in trimlab_medians],
        "trimlab_without_train_metrics_step_ms_per_repeat": [t * 1e3 for t in lean_medians],
        "plain_final_loss": plain_losses,
        "trimlab_final_loss": trimlab_losses,
        "model_overrides": list(model),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        small = compare(Path(tmp), "cnn")
        # A model whose step is ~10x longer: the same fixed per-step cost weighs ~10x less.
        larger = compare(Path(tmp), "resnet", "model=resnet", "model.width=32")
    results = {
        **small,
        "larger_model": larger,
        **startup(REPEATS),
        "setup": {"steps": STEPS, "repeats": REPEATS, "seed": SEED, "overrides": OVERRIDES},
        "env": {
            "python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }  # fmt: skip
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    keys = ("ratio", "ratio_without_train_metrics", "loss_abs_diff", "startup_ratio")
    print(
        json.dumps({**{k: results[k] for k in keys}, "larger_model_ratio": results["larger_model"]["ratio"]}, indent=2)
    )


if __name__ == "__main__":
    main()
