"""The deployed variant read back from `deployed/`: its manifest names the runtime and the files, and the model is
served from them exactly as the ledger scored it (same runtime settings, threads, and for inductor the same
compile), so `trimlab-eval ckpt=deployed` reproduces the chosen variant's metrics and `trimlab-predict` uses it."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trimlab.errors import CheckpointError, ConfigError, TrimlabError

FOLDER, MANIFEST = "deployed", "manifest.json"
RUNTIMES = ("torch", "onnxruntime", "openvino")


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of a run's deployed variant; None when the run deployed none (no deploy targets listed)."""
    path = Path(run_dir) / FOLDER / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["runtime"], manifest["files"][0]  # noqa: B018 - the keys every load needs
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt ({type(err).__name__}: {err}); re-run the job") from err
    return manifest


def check_runtime(manifest: dict[str, Any], run_dir: Path) -> None:
    """A deployed artifact whose runtime is not installed: one line naming the extra, before any data is read."""
    runtime = manifest["runtime"]
    where = Path(run_dir) / FOLDER
    if runtime not in RUNTIMES:
        raise CheckpointError(f"{where / MANIFEST} names runtime {runtime!r}, not one of {', '.join(RUNTIMES)}")
    if importlib.util.find_spec(runtime) is None:
        raise ConfigError(
            f"{where} is served by {runtime} {manifest.get('version', '')}, which is not installed; "
            "pip install 'trimlab[deploy]' (or pass ckpt=best for the torch model)"
        )


def load(run_dir: Path, cfg: Any, datamodule: Any, manifest: dict[str, Any]) -> Callable[..., Any]:
    """A runner taking batch inputs as the torch model does; a file its runtime cannot load is one error naming
    the file and the runtime."""
    check_runtime(manifest, run_dir)
    folder = Path(run_dir) / FOLDER
    path = folder / manifest["files"][0]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (listed in {folder / MANIFEST}); re-run the job")
    try:
        return runner(manifest, path, folder, cfg, datamodule)
    except TrimlabError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the runtime raises, the user needs the file and runtime
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{manifest['runtime']} {manifest.get('version', '')} cannot load {path}: {first}; "
            "re-run the job, or pass ckpt=best for the torch model"
        ) from err


def runner(manifest: dict[str, Any], path: Path, folder: Path, cfg: Any, datamodule: Any) -> Callable:
    import torch

    if manifest["runtime"] == "onnxruntime":
        from trimlab.deploy.ort import Session

        return Session(path)
    if manifest["runtime"] == "openvino":
        from trimlab.deploy.ov import HINTS, Compiled

        return Compiled(path, {**HINTS.get(manifest["variant"], {}), "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    from trimlab.compression import artifact
    from trimlab.deploy.inductor import Compiled as Inductor

    model = artifact.load(folder.parent, cfg, datamodule, folder)
    options = {}
    if isinstance(model, torch.fx.GraphModule):  # an int8 program compiles with the quantizer's pass
        from trimlab.compression.quantization import inductor_options, x86_quantizer_module

        x86_quantizer_module()
        options = inductor_options()
    return Inductor(model, options, int(cfg.cost.throughput_batch_size))
