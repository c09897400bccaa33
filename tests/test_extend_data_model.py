"""docs/extending.md, followed from outside the package: its "Add a dataset" and "Add a model" files, taken from
the guide as they are written there, go into a temp project (a user module on PYTHONPATH, a config dir added with
`hydra.searchpath`) and run through `trimlab-train` and `trimlab-eval`, with no edit under src/trimlab.

Reading the files from the guide keeps the guide true: a how-to whose code stops working fails here."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, REPO, compose_train, run_cli

GUIDE = REPO / "docs" / "extending.md"
SECTIONS = ("Add a dataset", "Add a model")
# A fenced block whose first line is a comment naming a file of the user's project: `# my_data.py`.
FILE_BLOCK = re.compile(r"^```\w*\n# ([\w/]+\.(?:py|yaml))\n(.*?)^```", re.S | re.M)
CLASSES = ["blue", "green", "red"]


def guide_files(*sections: str) -> dict[str, str]:
    """The project files the named sections of the guide write, by path (blocks of one path joined in order)."""
    text = GUIDE.read_text()
    files: dict[str, str] = {}
    for title in sections:
        assert f"\n## {title}\n" in text, f"{GUIDE} has no section '## {title}'"
        body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        for path, code in FILE_BLOCK.findall(body):
            files[path] = files.get(path, "") + code
    return files


def write_points(path: Path, rows: int = 150) -> None:
    """Three learnable classes in four numeric columns: each class lifts one column, labels are strings."""
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x0", "x1", "x2", "x3", "label"])
        for index in range(rows):
            label = index % len(CLASSES)
            point = rng.normal(size=4) * 0.5
            point[label] += 2.0
            writer.writerow([f"{value:.4f}" for value in point] + [CLASSES[label]])


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The user's project: the guide's files and a CSV, and the environment that makes the module importable."""
    root = tmp_path_factory.mktemp("my_project")
    for path, code in guide_files(*SECTIONS).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(code)
    write_points(root / "points.csv")
    return root, {"PYTHONPATH": os.pathsep.join([str(root), str(REPO / "src")])}


def train(root: Path, env: dict[str, str], *overrides: str):
    return run_cli(
        f"hydra.searchpath=[file://{root / 'conf'}]",
        "data=feature_csv",
        f"data.file={root / 'points.csv'}",
        *FAST,
        *overrides,
        cwd=root,
        env=env,
    )


@pytest.fixture(scope="module")
def user_run(project) -> Path:
    root, env = project
    result = train(root, env, "model=mlp")
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def test_the_guide_writes_a_module_and_a_config_per_how_to():
    assert sorted(guide_files(*SECTIONS)) == [
        "conf/data/feature_csv.yaml",
        "conf/model/mlp.yaml",
        "my_data.py",
        "my_models.py",
    ]


@pytest.mark.slow
def test_a_user_dataset_and_model_train_through_the_cli(user_run):
    summary = json.loads((user_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["data"]["_target_"] == "my_data.FeatureCSVDataModule"
    assert summary["config"]["model"]["_target_"] == "my_models.MLP"
    assert summary["data"]["class_names"] == CLASSES
    assert summary["data"]["input_shape"] == [4]
    assert summary["env"]["data_fingerprint"]
    for key in ("test/acc", "test/f1_macro", "test/auroc_macro"):
        assert math.isfinite(summary["metrics"][key]), key
    assert summary["metrics"]["test/acc"] > 0.6  # chance is 1/3: the labels line up with the features
    assert summary["cost"]["params"] > 0


@pytest.mark.slow
def test_eval_of_the_user_run_reproduces_it(user_run, project):
    _, env = project
    result = run_cli(f"run_dir={user_run}", cwd=user_run.parent, script="trimlab-eval", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((user_run / "eval.json").read_text())
    assert evaluation["reproduces"] is True
    summary = json.loads((user_run / "summary.json").read_text())
    assert evaluation["metrics"]["test/acc"] == summary["metrics"]["test/acc"]


def test_a_model_that_does_not_fit_the_user_data_names_both(project, monkeypatch):
    """In-process (a run would only fail): the same config dir, the user module importable as on PYTHONPATH."""
    from trimlab.errors import ConfigError
    from trimlab.factory import build

    root, _ = project
    monkeypatch.syspath_prepend(str(root))
    cfg = compose_train(
        f"hydra.searchpath=[file://{root / 'conf'}]",
        "data=feature_csv",
        f"data.file={root / 'points.csv'}",
        "model=transformer",  # needs a vocab_size the CSV does not give
        output_dir=root / "unused",
    )
    with pytest.raises(ConfigError) as caught:
        build(cfg)
    assert "FeatureCSVDataModule" in str(caught.value) and "TransformerClassifier" in str(caught.value)
