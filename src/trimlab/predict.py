"""trimlab-predict: class and probability for raw inputs from a run's model.

What counts as an input is the run's DataModule's business (`predict_dataset`): images, a .npy array, wav
files, or a text file with one text per line."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from trimlab.deploy import deployed
from trimlab.errors import TrimlabError, user_errors
from trimlab.launch import config_dir, launch


def predict(run_dir: Path, inputs: Path, output: Path | None, ckpt: str = "deployed", batch_size: int = 256) -> Path:
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from trimlab.compare import check_writable
    from trimlab.evaluation import predict_logits
    from trimlab.factory import load_run
    from trimlab.report import write_text

    output = output or run_dir / "predictions.csv"
    check_writable(output, "output")  # before the model is loaded: a bad path should not cost a model load
    cfg, summary = load_run(run_dir)
    if summary.get("status") != "completed":
        raise TrimlabError(f"{run_dir} has no completed summary.json; predict from a finished run")
    manifest = deployed.read_manifest(run_dir) if ckpt == "deployed" else None
    if manifest is not None:
        deployed.check_runtime(manifest, run_dir)  # a runtime not installed: before inputs are read
    datamodule = instantiate(cfg.data)
    datamodule.restore(run_dir, summary["data"])
    names, dataset = datamodule.predict_dataset(inputs)  # bad inputs fail before the model is loaded
    class_names = datamodule.class_names
    model = served_model(run_dir, cfg, summary, datamodule, ckpt, manifest)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=datamodule.collate)
    probs = predict_logits(model, loader)[0].softmax(-1)
    confidence, index = probs.max(-1)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["input", "class_index", "class_name", "probability"])
    for name, i, p in zip(names, index.tolist(), confidence.tolist(), strict=True):
        writer.writerow([name, i, class_names[i], f"{p:.6f}"])
    write_text(output, buffer.getvalue())
    return output


def served_model(run_dir: Path, cfg: DictConfig, summary: dict, datamodule: Any, ckpt: str, manifest: dict | None):
    """The deployed variant in its own runtime, the compressed artifact, or the checkpoint's weights."""
    from hydra.utils import instantiate

    from trimlab.checkpoints import load_weights
    from trimlab.evaluate import checkpoint_path, is_compressed
    from trimlab.factory import make_backbone

    if manifest is not None:
        return deployed.load(run_dir, cfg, datamodule, manifest)
    if is_compressed(ckpt, summary):
        from trimlab.compression import artifact

        return artifact.load(run_dir, cfg, datamodule)
    task = instantiate(cfg.task, backbone=make_backbone(cfg, datamodule), num_classes=len(datamodule.class_names))
    load_weights(task, checkpoint_path(run_dir, ckpt, summary))
    return task.eval().backbone


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def run(cfg: DictConfig) -> None:
    with user_errors():
        output = predict(
            Path(cfg.run_dir),
            Path(cfg.inputs),
            Path(cfg.output) if cfg.output else None,
            str(cfg.ckpt),
            int(cfg.batch_size),
        )
    print(output.absolute(), flush=True)


def main() -> None:
    launch(run, "predict")


if __name__ == "__main__":
    main()
