"""Run ids, run dirs, and where the configs are.

A run dir is `<output_root>/<task_name>/<date>_<time>_<run id>`, so two runs started in the same second never
share one. The run id is the run's name everywhere (dir suffix, W&B id, summary). Hydra resolves `${run_id:}`
when it creates the dir; the id is cached until the job ends, so every later lookup in the same job agrees.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from omegaconf import OmegaConf

_current_id: str | None = None
RUN_DIR_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_(?P<id>[0-9a-z]{8})$")


def config_dir() -> str:
    """The packaged configs in an installed wheel; the repo's top-level conf/ in a checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def current_run_id() -> str:
    global _current_id
    if _current_id is None:
        _current_id = uuid.uuid4().hex[:8]
    return _current_id


def set_run_id(run_id: str | None) -> None:
    """Pin the id (resuming a run keeps its id) or clear it (the next job gets a fresh one)."""
    global _current_id
    _current_id = run_id


def run_id_from_dir(run_dir: str | Path) -> str | None:
    match = RUN_DIR_PATTERN.match(Path(run_dir).name)
    if match:
        return match.group("id")
    match = re.match(r"^\d+_(?P<id>[0-9a-z]{8})$", Path(run_dir).name)  # a sweep job dir
    return match.group("id") if match else None


_sweep_id = uuid.uuid4().hex[:6]  # one per process: a sweep's jobs share it, two sweeps never do
_sweep_name: list[str] = []  # the sweep dir's name while a sweep job runs: its W&B group


def set_sweep_name(name: str | None) -> None:
    _sweep_name[:] = [name] if name else []


def sweep_name() -> str | None:
    return _sweep_name[0] if _sweep_name else None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", current_run_id)
    if not OmegaConf.has_resolver("sweep_id"):
        OmegaConf.register_new_resolver("sweep_id", lambda: _sweep_id)
    if not OmegaConf.has_resolver("sweep_name"):
        OmegaConf.register_new_resolver("sweep_name", sweep_name)
    if not OmegaConf.has_resolver("pretrained_encoder"):
        OmegaConf.register_new_resolver("pretrained_encoder", _pretrained_encoder)


def _pretrained_encoder() -> str | None:
    """`${pretrained_encoder:}`: the installed all-MiniLM-L6-v2 dir, or null (trimlab[pretrained] absent)."""
    from trimlab.models.text import default_encoder_dir

    return default_encoder_dir()


def finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    try:
        return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"
    except ValueError:
        return False


def latest_run_dir(task_dir: Path) -> Path | None:
    """The newest unfinished run under `task_dir` that has a last checkpoint to resume from."""
    candidates = [
        p
        for p in task_dir.glob("*/checkpoints/last.ckpt")
        if RUN_DIR_PATTERN.match(p.parents[1].name) and not finished(p.parents[1])
    ]
    return max(candidates, key=lambda p: p.parents[1].name).parents[1] if candidates else None


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
