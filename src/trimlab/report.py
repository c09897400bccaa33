"""What a run leaves behind: summary.json (atomic), plots, the closing table, and the same keys for loggers."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from trimlab import schema


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same dir and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(jsonable(payload), indent=2) + "\n")


def git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_name(device: Any) -> str:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()}"


def cpu_model() -> str:
    """The CPU's model name: the same machine kind may come with another CPU on another day."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str | None:
    """The vector instructions PyTorch's CPU kernels use here (AVX2, AVX512...): int8 timings flip with it."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def environment(seed: int, data_fingerprint: str, device: Any) -> dict[str, Any]:
    import torch

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lightning": version("lightning"),
        "hydra": version("hydra-core"),
        "trimlab": version("trimlab"),
        "git_commit": git_commit(),
        "data_fingerprint": data_fingerprint,
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "host": platform.node(),
    }


def flat_scores(summary: dict) -> dict[str, float]:
    """Scalar metrics and cost under one namespace each, as every logger receives them; a compressed run's
    per-stage figures as `cost/after/<stage>/<key>` and `after/<stage>/test/acc`."""
    metrics = {k: v for k, v in summary.get("metrics", {}).items() if k not in ("sklearn", "per_class")}
    return {**scalars(metrics, ""), **scalars(summary.get("cost", {}), "cost/")}


def scalars(tree: dict, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "facts":
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def save_predictions(run_dir: Path, probs: np.ndarray, targets: np.ndarray) -> None:
    """Per-example test probabilities: what paired comparisons of two runs need (same test set, same order)."""
    temporary = run_dir / ".test_predictions.npz.tmp"
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, probs=probs.astype(np.float32), targets=targets)
    temporary.replace(run_dir / "test_predictions.npz")


def save_plots(run_dir: Path, probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay.from_predictions(
        targets,
        probs.argmax(1),
        labels=list(range(len(class_names))),
        display_labels=class_names,
        ax=ax,
        colorbar=False,
    )
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(run_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 6))
    for index, name in enumerate(class_names):
        if 0 < (targets == index).sum() < len(targets):
            RocCurveDisplay.from_predictions(
                targets == index, probs[:, index], name=name, ax=ax, plot_chance_level=False
            )
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_title("ROC, one vs rest (test)")
    fig.tight_layout()
    fig.savefig(run_dir / "roc.png", dpi=100)
    plt.close(fig)


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trimlab run {summary['run_id']} ({summary['status']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics, cost = summary.get("metrics", {}), summary.get("cost", {})
    for figure in schema.figures(schema.declared(summary)):
        value = (metrics if figure.where == "metrics" else cost).get(figure.name)
        if figure.report and isinstance(value, int | float) and not isinstance(value, bool):
            unit = f" {figure.unit}" if figure.unit else ""
            table.add_row(figure.name, f"{value:.4f}" if figure.where == "metrics" else f"{value:,}{unit}")
    console = Console(stderr=False, width=120)
    console.print(table)
    if summary.get("compression"):
        console.print(stage_table(metrics, cost))
    if summary.get("deploy"):
        console.print(deploy_table(summary["deploy"], cost.get("deploy", {})))


def stage_table(metrics: dict, cost: dict):
    """Baseline, then each stage: accuracy and what serving costs, compiled and eager."""
    from rich.table import Table

    table = Table(title="compression, stage by stage (latency at batch 1, throughput at batch 64)")
    for column in ("model", "test/acc", "Δacc pt", "latency ms", "eager ms", "samples/s", "size B", "params"):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [("baseline", metrics.get("baseline", {}), cost.get("baseline", {}))]
    rows += [(name, metrics.get("after", {}).get(name, {}), ledger) for name, ledger in cost.get("after", {}).items()]
    for name, scores, ledger in rows:
        nan = float("nan")
        table.add_row(
            name, f"{scores.get('test/acc', nan):.4f}", f"{scores.get('acc_delta_pt', 0.0):+.2f}",
            f"{ledger.get('latency_ms_p50', nan):.3f}", f"{ledger.get('latency_ms_p50_eager', nan):.3f}",
            f"{ledger.get('throughput_samples_per_s', 0):,.0f}", f"{ledger.get('size_bytes', 0):,}",
            f"{ledger.get('params') or 0:,}",
        )  # fmt: skip
    return table


def deploy_table(picked: dict, ledger: dict):
    """Every deploy variant against inductor fp32, the chosen one first and marked: why it was deployed."""
    from rich.table import Table

    key, tolerance = picked["key"], picked["tolerance_pt"]
    title = f"deploy: cheapest by {picked['objective']} within {tolerance} pt of the trained test/acc (* deployed)"
    table = Table(title=title)
    for column in ("variant", "test/acc", "Δacc pt", "latency ms", "×", "samples/s", "×", "size B", "note"):
        table.add_column(column, justify="left" if column in ("variant", "note") else "right")
    for row in picked["why"]:
        target, variant = row["variant"].split("/")
        found = ledger.get(target, {}).get(variant, {})
        if found.get("status") != "ok":
            table.add_row(row["variant"], *[""] * 7, str(row.get("reason") or row.get("status")))
            continue
        ratios = found.get("vs_inductor", {})
        table.add_row(
            ("* " if row["chosen"] else "") + row["variant"], f"{found['test/acc']:.4f}", f"{row['acc_delta_pt']:+.2f}",
            f"{found['latency_ms_p50']:.3f}", f"{ratios.get('latency', float('nan')):.2f}",
            f"{found['throughput_samples_per_s']:,.0f}", f"{ratios.get('throughput', float('nan')):.2f}",
            f"{found['size_bytes']:,}", "" if row["eligible"] else f"over the tolerance ({key} not ranked)",
        )  # fmt: skip
    return table
