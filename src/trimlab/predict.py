"""trimlab-predict: class and probability for raw inputs from a run's model.

What counts as an input is the run's DataModule's business (`predict_dataset`): images, a .npy array, wav
files, or a text file with one text per line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trimlab.cli import config_dir, launch
from trimlab.errors import TrimlabError, fail, full_errors


def predict(run_dir: Path, inputs: Path, output: Path | None, ckpt: str = "best", batch_size: int = 256) -> Path:
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from trimlab.checkpoints import load_weights
    from trimlab.evaluate import checkpoint_path, load_run
    from trimlab.pipeline import make_backbone
    from trimlab.report import write_text

    cfg, summary = load_run(run_dir)
    if summary.get("status") != "completed":
        raise TrimlabError(f"{run_dir} has no completed summary.json; predict from a finished run")
    datamodule = instantiate(cfg.data)
    datamodule.restore(run_dir, summary["data"])
    class_names = datamodule.class_names
    backbone = make_backbone(cfg, datamodule)
    task = instantiate(cfg.task, backbone=backbone, num_classes=len(class_names), class_names=class_names)
    load_weights(task, checkpoint_path(run_dir, ckpt, summary))
    task.eval()

    names, dataset = datamodule.predict_dataset(inputs)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=datamodule.collate)
    with torch.inference_mode():
        probs = torch.cat([task(batch_inputs).softmax(-1) for batch_inputs, _ in loader])
    confidence, index = probs.max(-1)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["input", "class_index", "class_name", "probability"])
    for name, i, p in zip(names, index.tolist(), confidence.tolist(), strict=True):
        writer.writerow([name, i, class_names[i], f"{p:.6f}"])
    output = output or run_dir / "predictions.csv"
    write_text(output, buffer.getvalue())
    return output


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def run(cfg: DictConfig) -> None:
    try:
        output = predict(
            Path(cfg.run_dir),
            Path(cfg.inputs),
            Path(cfg.output) if cfg.output else None,
            str(cfg.ckpt),
            int(cfg.batch_size),
        )
    except TrimlabError as err:
        if full_errors():
            raise
        fail(str(err))
    print(output.absolute(), flush=True)


def main() -> None:
    launch(run, "predict")


if __name__ == "__main__":
    main()
