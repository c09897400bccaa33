"""trimlab-eval: re-test a finished run from its saved config and checkpoint, and check it reproduces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from trimlab import schema
from trimlab.deploy import deployed
from trimlab.errors import CheckpointError, user_errors
from trimlab.launch import config_dir, launch

HEADLINE = schema.names(where="metrics", headline=True)


def is_compressed(which: str, summary: dict[str, Any]) -> bool:
    """`deployed` means the compressed artifact when the run has one (its summary's final metrics are its)."""
    return which == "deployed" and bool(summary.get("compression"))


def checkpoint_path(run_dir: Path, which: str, summary: dict[str, Any]) -> Path:
    if which in ("best", "deployed"):
        path = run_dir / (summary.get("checkpoint") or "checkpoints/best.ckpt")  # relative: run dirs move
    elif which == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
    else:
        path = Path(which)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass ckpt=deployed, best, last or <file>")
    return path


def evaluate(run_dir: Path, ckpt: str = "deployed", data_root: str | None = None) -> dict[str, Any]:
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from trimlab.checkpoints import load_weights
    from trimlab.evaluation import evaluate_model
    from trimlab.factory import build, load_run

    cfg, summary = load_run(run_dir, data_root)
    manifest = deployed.read_manifest(run_dir) if ckpt == "deployed" else None
    if manifest is not None:
        deployed.check_runtime(manifest, run_dir)  # a runtime not installed: before any data is read
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, task = build(cfg, artifacts_from=run_dir)
    if manifest is not None:  # the variant chosen among the deploy targets, served by its own runtime
        runner = deployed.load(run_dir, cfg, datamodule, manifest)
        metrics = evaluate_model(runner, datamodule).metrics
        path = run_dir / deployed.FOLDER / manifest["files"][0]
        return compare(run_dir, summary, metrics, path, reference=manifest.get("metrics", {}))
    if is_compressed(ckpt, summary):
        from trimlab.compression import artifact

        metrics = evaluate_model(artifact.load(run_dir, cfg, datamodule), datamodule).metrics
        return compare(run_dir, summary, metrics, run_dir / summary["compression"]["artifact"]["path"])
    path = checkpoint_path(run_dir, ckpt, summary)
    load_weights(task, path)
    # The run's own trainer settings (precision, test batch limits...) on one device, without its side effects.
    trainer = instantiate(
        cfg.trainer,
        strategy="auto",
        devices=1,
        num_nodes=1,
        logger=False,
        callbacks=[],
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(run_dir),
    )
    trainer.test(task, datamodule=datamodule, verbose=False)
    return compare(run_dir, summary, task.test_record.metrics, path)


def compare(run_dir: Path, summary: dict[str, Any], metrics: dict[str, Any], path: Path,
            reference: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """`reference`: the metrics to reproduce when not the summary's (a deployed variant's, from its ledger)."""
    from trimlab.report import write_json

    trained = summary.get("metrics", {}) if reference is None else reference
    if "compression" in summary and path.suffix == ".ckpt":  # a checkpoint of a compressed run: the trained model
        trained = trained.get("trained", {})
    diffs = {k: abs(metrics[k] - trained[k]) for k in HEADLINE if k in metrics and trained.get(k) is not None}
    result = {
        "run_id": summary.get("run_id"),
        "checkpoint": str(path),
        "metrics": metrics,
        "summary_metrics": {k: trained.get(k) for k in HEADLINE},
        "max_abs_diff": max(diffs.values()) if diffs else None,
        "reproduces": bool(diffs) and max(diffs.values()) == 0.0,
    }
    write_json(run_dir / "eval.json", result)
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def run(cfg: DictConfig) -> None:
    with user_errors():
        result = evaluate(Path(cfg.run_dir), str(cfg.ckpt), cfg.data_root)
    for key in HEADLINE:
        print(f"{key:22s} {result['metrics'][key]:.6f}  (summary: {result['summary_metrics'][key]})")
    print(f"reproduces the run's summary: {result['reproduces']} (max abs diff {result['max_abs_diff']})")
    print(Path(cfg.run_dir).absolute() / "eval.json", flush=True)


def main() -> None:
    launch(run, "eval")


if __name__ == "__main__":
    main()
