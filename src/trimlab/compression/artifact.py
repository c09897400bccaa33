"""The compressed model on disk, and back.

Two forms, named in `compressed/recipe.json`:
- `state_dict` (`model.pt`): pruned or distilled fp32 models. Loads with `weights_only=True` into the run's
  model class, after `resize_to` gives a fresh model the pruned shapes (a pruned state_dict does not load
  into the original class as is).
- `exported` (`model.pt2`): quantized and bf16 models, as a `torch.export` program with a dynamic batch
  (and sequence) dimension. Loaded with every inner `torch.load` forced to `weights_only`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trimlab.batches import take
from trimlab.errors import CheckpointError, ConfigError

FOLDER, RECIPE = "compressed", "recipe.json"


def resize_to(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Give `model`'s tensors the shapes saved in `state_dict` (and the attributes forward reads)."""
    changed = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        touched = False
        for store in (module._parameters, module._buffers):
            for key, old in list(store.items()):
                saved = state_dict.get(prefix + key)
                if old is None or saved is None or saved.shape == old.shape:
                    continue
                new = torch.empty(saved.shape, dtype=old.dtype, device=old.device)
                store[key] = (
                    nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
                )
                touched = True
        if touched:
            resize_attributes(name, module)
            changed.append(name)
    return changed


def resize_attributes(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = (module.weight if module.weight is not None else module.running_mean).shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
    else:
        raise CheckpointError(f"cannot rebuild the pruned shape of {name} ({type(module).__name__})")


def export_program(model: nn.Module, sample: Any, max_length: int = 512) -> torch.export.ExportedProgram:
    """`torch.export` with a dynamic batch (and, for text, sequence up to `max_length`) dimension; a clear
    error naming the module when the model cannot be exported."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    # The program stores its example inputs: two samples, copied out of the batch's storage.
    sample = {k: v.clone() for k, v in take(sample, 2).items()} if isinstance(sample, dict) else take(sample, 2).clone()
    try:
        if isinstance(sample, dict):
            length = Dim("length", min=2, max=max_length)
            shapes = {key: {0: batch, 1: length} for key in sample}
            return torch.export.export(model, (), kwargs=sample, dynamic_shapes=shapes)
        return torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))
    except Exception as err:  # noqa: BLE001 - torch.export raises many types; all mean "cannot export"
        raise ConfigError(
            f"cannot export {type(model).__name__} for quantization ({unexportable_module(err)}: "
            f"{str(err).strip().splitlines()[0][:300]}); quantize a model built from plain layers, or drop the stage"
        ) from err


def slim(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """What a deployed program needs: no source stack traces (they name local paths and are ~1/3 of the file)
    and no stored example inputs."""
    for node in program.graph.nodes:
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "from_node"):
            node.meta.pop(key, None)
    program._example_inputs = None
    return program


def unexportable_module(err: Exception) -> str:
    """The innermost module in torch.export's traceback: where the unsupported code lives."""
    import traceback

    own = Path(__file__).parent
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if "/torch/" not in f.filename and Path(f.filename).parent != own
    ]
    frame = frames[-1] if frames else None
    return f"in {Path(frame.filename).stem}.{frame.name}, line {frame.lineno}" if frame else "in the model"


def strip_dead_weights(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`convert_pt2e` keeps the fp32 weights it replaced: drop every tensor no graph node reads."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph_module.named_parameters(), *graph_module.named_buffers()]:
        if name not in used:
            path, _, attribute = name.rpartition(".")
            delattr(graph_module.get_submodule(path) if path else graph_module, attribute)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


@contextlib.contextmanager
def staged(run_dir: Path) -> Iterator[Path]:
    """A scratch `compressed.tmp/` that becomes `compressed/` only when the block succeeds; removed otherwise."""
    scratch, final = Path(run_dir) / "compressed.tmp", Path(run_dir) / FOLDER
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    scratch.replace(final)


def save(model: nn.Module, exported: bool, sample: Any, folder: Path, stages: list[str], length: int) -> dict:
    """Write the model and its recipe into `folder`; the record's path is relative to the run dir."""
    from trimlab.report import write_json

    path = folder / ("model.pt2" if exported else "model.pt")
    if exported:
        torch.export.save(slim(export_program(model, sample, length)), path)
    else:
        torch.save(model.state_dict(), path)
    recipe = {"format": "exported" if exported else "state_dict", "file": path.name, "stages": stages}
    write_json(folder / RECIPE, recipe)
    return {**recipe, "size_bytes": path.stat().st_size, "path": f"{FOLDER}/{path.name}"}


def load(run_dir: Path, cfg: Any, datamodule: Any, folder: Path | None = None) -> nn.Module:
    """The compressed model of a finished run (or of `folder`, while it is being written), in eval mode."""
    folder = folder or Path(run_dir) / FOLDER
    try:
        recipe = json.loads((folder / RECIPE).read_text())
        path = folder / recipe["file"]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{folder / RECIPE} is missing or corrupt ({err}); re-run the training") from err
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; re-run the training")
    if recipe["format"] == "exported":
        return load_program(path)
    from trimlab.factory import make_backbone

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise CheckpointError(f"{path} cannot be read safely ({err}); it is corrupt") from err
    model = make_backbone(cfg, datamodule)
    resize_to(model, state)
    model.load_state_dict(state)
    return model.eval()


def load_program(path: Path) -> nn.Module:
    import torchao.quantization.pt2e  # noqa: F401 - registers the quantized_decomposed ops the program calls

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # no pickle of arbitrary objects inside the archive
    try:
        return torch.export.load(path).module()
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} cannot be loaded as an exported program ({err}); re-run the training") from err
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
