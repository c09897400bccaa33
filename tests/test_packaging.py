"""The wheel carries the configs: an installed trimlab runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_ships_conf_and_runs_elsewhere(tmp_path):
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
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "TRIMLAB_OUTPUT": str(elsewhere / "outputs")}
    code = "import sys, trimlab.train as t; print(t.__file__, file=sys.stderr); t.main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "--cfg", "job", "model=resnet"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(target) in result.stderr  # the installed copy ran, not the checkout
    assert "trimlab.models.vision.ResNet" in result.stdout
