"""`pip install .` into a fresh venv: the wheel carries the configs, and trimlab-train runs from any directory."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_installs_into_a_fresh_venv_and_runs_elsewhere(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("trimlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "trimlab/conf/train.yaml" in names and "trimlab/conf/model/resnet.yaml" in names

    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True)
    # Dependencies come from this environment (no downloads); trimlab itself only from the wheel.
    fresh_site = next((fresh / "lib").glob("python3*/site-packages"))
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [str(fresh / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run_dir = elsewhere / "my_run"
    result = subprocess.run(
        [str(fresh / "bin" / "trimlab-train"), "debug=fast_dev_run", f"hydra.run.dir={run_dir}",
         "trainer.enable_progress_bar=false"],
        cwd=elsewhere, env={**env, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)  # hydra.run.dir= wins
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["task_name"] == "debug"
    code = "import trimlab.launch as c; print(c.config_dir())"
    where = subprocess.run([str(fresh / "bin" / "python"), "-c", code], cwd=elsewhere, env=env, capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(fresh_site))  # the wheel's packaged conf, not the checkout's
