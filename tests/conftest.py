"""Shared fixtures: composed configs for in-process runs, CLI runs in a temp dir, tiny synthetic datasets."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one test process per core: one thread each, here and
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # in the commands they start (more would fight for the cores)

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from trimlab import rundir
from trimlab.launch import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRIMLAB_DATA") or REPO.parent / "shared" / "data")
BIN = Path(sys.executable).parent
# Few epochs and few timing repeats: tests check behaviour, benchmarks measure speed.
FAST = [
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "cost.latency_warmup=1",
    "cost.latency_repeats=3",
    "cost.throughput_repeats=2",
]


def compose_train(*overrides: str, output_dir: Path) -> object:
    rundir.register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*FAST, f"paths.output_dir={output_dir}", *overrides])


def cli_env(cwd: Path, **extra: str) -> dict[str, str]:
    """A command's environment as in a user's shell: offline W&B, outputs under `cwd`, and no WANDB_SERVICE.
    (Tests that used W&B in this process set WANDB_SERVICE; children would share that W&B service, which keeps
    a killed child's run id held.)"""
    env = {**os.environ, "WANDB_MODE": "offline", "TRIMLAB_OUTPUT": str(cwd / "outputs"), **extra}
    for name in ("HYDRA_FULL_ERROR", "WANDB_SERVICE"):
        env.pop(name, None)
    return env


def run_cli(*args: str, cwd: Path, script: str = "trimlab-train", env: dict | None = None, timeout: int = 300):
    full_env = cli_env(cwd, **(env or {}))
    return subprocess.run(
        [str(BIN / script), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def assert_clear_error(result, *fragments: str) -> str:
    """A non-zero exit whose stderr ends in one `trimlab: error:` line with no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("trimlab: error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


def preflight_error(capsys, *args: str) -> str:
    """The one line (and exit code 2) a command line's checks give, in-process: they run before Lightning is
    imported, so a bad value needs no process of its own. tests/test_cli_errors.py shows the same through the CLI."""
    from trimlab.launch import preflight

    with pytest.raises(SystemExit) as exit_info:
        preflight(list(args))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trimlab: error: ")
    return lines[0]


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A data root holding MNIST/raw/ with 200 train and 50 test random images (idx .gz, real format)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        for index, label in enumerate(labels):  # a class-dependent bright bar: learnable
            images[index, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images, 0x803)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801)
    return tmp_path / "data"


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for index in range(10):
            pixels = rng.integers(0, 60, (12, 16, 3), dtype=np.uint8)
            pixels[:, :, label] = 220
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


# The files that take longest, first (longest-processing-time-first scheduling): pytest-xdist (`--dist loadfile
# --no-loadscope-reorder`, which keeps this order instead of sorting files by their number of tests) hands them
# out at the start, and the two workers end together instead of one running a long file alone at the end.
# Ordered by their wall time in `make test` (its --durations list and per-file spans).
LONGEST_FIRST = ("test_every_option.py", "test_distributed.py", "test_speech.py", "test_end_to_end.py",
                 "test_signals.py", "test_sweeps.py", "test_deploy.py", "test_text.py", "test_compression_cli.py",
                 "test_compression.py", "test_serve.py", "test_cli_errors.py", "test_transfer_semi.py",
                 "test_sweep_signals.py", "test_tracking.py", "test_secrets.py")  # fmt: skip


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order
