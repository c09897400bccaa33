"""trimlab-predict: class and probability for images (a file, a folder, or a .npy array) from a run's model."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from trimlab.cli import config_dir, launch
from trimlab.errors import DataError, TrimlabError, fail, full_errors


def read_inputs(inputs: Path, channels: int) -> tuple[list[str], list[np.ndarray]]:
    """Names and images in [0, 1] (each (H, W) or (H, W, C))."""
    from trimlab.data.vision import IMAGE_SUFFIXES, read_image

    if not inputs.exists():
        raise DataError(f"inputs {inputs} does not exist; pass an image file, a folder of images or a .npy file")
    if inputs.suffix == ".npy":
        try:
            array = np.load(inputs, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"cannot read {inputs} as a .npy array ({err})") from err
        array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        if array.ndim == 2:
            array = array[None]
        return [f"{inputs.name}[{i}]" for i in range(len(array))], list(array)
    files = sorted(p for p in inputs.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if inputs.is_dir() else [inputs]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {inputs}")
    return [str(p) for p in files], [read_image(p, channels) for p in files]


def predict(run_dir: Path, inputs: Path, output: Path | None, ckpt: str = "best", batch_size: int = 256) -> Path:
    import torch
    from hydra.utils import instantiate

    from trimlab.checkpoints import load_weights
    from trimlab.evaluate import checkpoint_path, load_run
    from trimlab.pipeline import make_backbone
    from trimlab.report import write_text

    cfg, summary = load_run(run_dir)
    if summary.get("status") != "completed":
        raise TrimlabError(f"{run_dir} has no completed summary.json; predict from a finished run")
    class_names, input_shape = summary["data"]["class_names"], summary["data"]["input_shape"]
    datamodule = instantiate(cfg.data)
    datamodule.input_shape = tuple(input_shape)
    backbone = make_backbone(cfg, input_shape, len(class_names))
    task = instantiate(cfg.task, backbone=backbone, num_classes=len(class_names), class_names=class_names)
    load_weights(task, checkpoint_path(run_dir, ckpt, summary))
    task.eval()

    names, images = read_inputs(inputs, input_shape[0])
    batch = torch.cat([datamodule.preprocess(image[None]) for image in images])
    with torch.inference_mode():
        probs = torch.cat([task(chunk).softmax(-1) for chunk in batch.split(batch_size)])
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
