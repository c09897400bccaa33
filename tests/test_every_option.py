"""Every option of every config group runs through `trimlab-train`: a tiny run that completes, or a failure for a
reason the README gives (FSDP or `trainer=gpu` without a GPU, a real dataset absent from the data dir, SLURM
absent; the real datasets are read only with TRIMLAB_TEST_REAL_DATA=1). Options come from the files in conf/ (and
the launchers Hydra finds), so a new option file is run too. The multi-process strategies run in
tests/test_distributed.py's sweep, where each gets the two ranks it is for; the deploy runtimes in
tests/test_deploy.py's run, which measures all three.

One multirun per group (jobs in-process), a few groups crossed where that is cheaper than another process, a few
processes at once. Each model runs on data of its modality; options whose data needs a path get a tiny dataset
through a user config dir (`hydra.searchpath`), as a user adds their own.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import SHARED_DATA, run_cli
from test_deploy import RUNTIMES
from test_distributed import SWEPT_STRATEGIES

pytestmark = pytest.mark.slow
CONF = Path(__file__).resolve().parents[1] / "conf"
# One batch of train, val and test, with checkpoints (a distillation teacher and a transfer source need them).
TINY = [
    "trainer.max_epochs=1", "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "cost.latency_warmup=1",
    "cost.latency_repeats=1", "cost.throughput_repeats=1", "cost.compile=false",
]  # fmt: skip
MISSING_DATA = "set env TRIMLAB_DATA or data.root=<dir>"
# Loading the real datasets (MNIST, SST-2, Speech Commands...) would take this test past its time budget: they are
# read from an empty data dir, where their options fail with the documented missing-dataset error (and the rest run
# on digits or tiny generated data). TRIMLAB_TEST_REAL_DATA=1 runs them on the real data too.
REAL_DATA = SHARED_DATA.is_dir() and os.environ.get("TRIMLAB_TEST_REAL_DATA") == "1"
# Options that need a path get one from a user config of the same group: <option>_tiny.yaml.
NEEDS_PATH = {"image_folder": "folder", "text_csv": "file", "wav_folder": "folder"}
# Options another test already runs through `trimlab-train`: the multi-process strategies with the two ranks each
# needs (a sweep in tests/test_distributed.py), the deploy runtimes in one run (tests/test_deploy.py).
RUN_ELSEWHERE = {("strategy", name) for name in SWEPT_STRATEGIES} | {("deploy", name) for name in RUNTIMES}


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def launchers() -> list[str]:
    """hydra/launcher options: Hydra's plugins and conf/hydra/launcher."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options("hydra/launcher"))


def every_option() -> set[tuple[str, str]]:
    groups = {path.parent.relative_to(CONF).as_posix() for path in CONF.rglob("*.yaml") if path.parent != CONF}
    groups -= {"hydra/launcher", "hydra/sweeper"}  # sweepers: basic runs every -m, trimlab_optuna every search
    every = {(group, option) for group in groups for option in options(group)}
    return every - RUN_ELSEWHERE | {("hydra/launcher", option) for option in launchers()}


def modality(group: str, option: str) -> str:
    """vision, text or speech, from the module of the option's `_target_`."""
    return str(OmegaConf.load(CONF / group / f"{option}.yaml")._target_).split(".")[2]


def tiny_data(root: Path) -> Path:
    """Images, a CSV and wavs for the options that need a path, and user configs that point at them."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(2):
        (root / "images" / f"c{label}").mkdir(parents=True)
        (root / "wavs" / f"w{label}").mkdir(parents=True)
        for index in range(10):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                root / f"images/c{label}/{index}.png"
            )
            wave = np.sin(np.arange(4000) * (0.05 + 0.1 * label)) * rng.uniform(0.2, 0.8)
            sf.write(root / f"wavs/w{label}/{index}.wav", wave.astype(np.float32), 16000)
    rows = [
        f"{'good fine great' if i % 2 else 'bad awful poor'} item {i},{'pos' if i % 2 else 'neg'}" for i in range(40)
    ]
    (root / "texts.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    paths = {"image_folder": root / "images", "text_csv": root / "texts.csv", "wav_folder": root / "wavs"}
    (root / "conf" / "data").mkdir(parents=True)
    for option, key in NEEDS_PATH.items():
        text = f"defaults:\n  - {option}\n{key}: {paths[option]}\n"
        (root / "conf" / "data" / f"{option}_tiny.yaml").write_text(text)
    return root / "conf"


def data_and_models(modality_name: str) -> list[str]:
    data = [o + "_tiny" if o in NEEDS_PATH else o for o in options("data") if modality("data", o) == modality_name]
    models = [o for o in options("model") if modality("model", o) == modality_name and o != "hf_encoder"]
    return ["-m", f"data={','.join(data)}", f"model={','.join(models)}"]


def sweep(group: str, *fixed: str, drop: tuple[str, ...] = ()) -> list[str]:
    return ["-m", f"{group}={','.join(o for o in options(group) if o not in drop)}", *fixed]


def commands() -> dict[str, list[str]]:
    """Independent processes; `after_commands` need run dirs these leave."""
    searches = options("hparams_search")
    runners = [launcher for launcher in launchers() if launcher != "submitit_slurm"]
    commands = {
        **{name: data_and_models(name) for name in ("vision", "text")},
        "speech": [*data_and_models("speech"), "speedup=feature_cache"],  # the speech-only speedup method
        "hf_encoder": [
            "-m",
            "model=hf_encoder",
            "data=text_csv_tiny",
            "data.tokenizer=pretrained",
            "data.tokenizer_path=${model.pretrained_path}",
        ],  # fmt: skip
        "task": [
            "-m",
            "task=classification",
            *sweep("task/optimizer")[1:],
            *sweep("task/scheduler")[1:],
            "callbacks=default",
            "paths=default",
        ],  # fmt: skip
        "precision": [*sweep("precision"), *sweep("semi_supervised")[1:]],
        "trainer": [*sweep("trainer", drop=("gpu",)), *sweep("debug")[1:], "strategy=auto"],
        "gpu": ["trainer=gpu"],  # refused before it starts where there is no GPU: alone, not in a sweep
        "logger": [*sweep("logger"), "deploy=none"],
        "compression": sweep("compression", drop=("distill",)),
        # stop_at_target reads its target from cost.target; feature_cache runs with the speech models
        "speedup": [*sweep("speedup", drop=("feature_cache",)), "cost.target=val/acc:0.1"],
        "fsdp": ["strategy=fsdp", "trainer.devices=1"],
        "experiment": sweep("experiment", "compression=none", drop=("sst2_distill", "speech_commands_transfer")),
        "slurm": ["-m", "hydra/launcher=submitit_slurm"],
    }
    for index, search in enumerate(searches):  # each search with a launcher: one process covers both
        launcher = runners[index % len(runners)]
        commands[search] = [f"hparams_search={search}", f"hydra/launcher={launcher}", "hydra.sweeper.n_trials=1"]
    return commands


def after_commands(first: dict[str, dict]) -> dict[str, list[str]]:
    """Options that start from another run: a teacher (distill) or a transfer source."""

    def run_dir(name: str, *words: str) -> str:
        """That run's dir; without the real data, any finished run (the option then stops at its missing data)."""
        rows = [r for r in first[name]["rows"] if all(w in r["overrides"].split() for w in words)]
        if not (rows and rows[0]["status"] == "completed") and not REAL_DATA:
            rows = [r for r in first["vision"]["rows"] if r["status"] == "completed"]
        return rows[0]["run_dir"] if rows and rows[0]["status"] == "completed" else "/absent"

    return {
        "distill": ["-m", "compression=distill",
                    f"compression.distill.teacher={run_dir('vision', 'data=digits', 'model=cnn')}"],
        "sst2_distill": ["-m", "experiment=sst2_distill",
                         f"compression.distill.teacher={run_dir('text', 'data=sst2', 'model=transformer')}"],
        "speech_commands_transfer": ["-m", "experiment=speech_commands_transfer",
                                     f"model.pretrained={run_dir('speech', 'data=fsdd', 'model=speech_cnn')}"],
    }  # fmt: skip


def run(name: str, args: list[str], root: Path, env: dict[str, str]) -> dict:
    sweep_dir = root / "sweeps" / name
    command = [*args, *TINY, f"hydra.searchpath=[file://{root / 'conf'}]", f"hydra.sweep.dir={sweep_dir}"]
    started = time.monotonic()
    result = run_cli(*command, cwd=root, env=env, timeout=600)
    print(f"{name}: {time.monotonic() - started:.1f} s", flush=True)  # pytest -s shows where the time goes
    summary = sweep_dir / "sweep_summary.json"
    rows = json.loads(summary.read_text())["rows"] if summary.is_file() else []
    last = (result.stderr.strip().splitlines() or [""])[-1]
    return {"args": args, "rows": rows, "returncode": result.returncode, "last_line": last, "stderr": result.stderr}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(group, option) -> the (status, error) of every job that ran it."""
    root = tmp_path_factory.mktemp("every_option")
    tiny_data(root)
    data_root = SHARED_DATA if REAL_DATA else root / "no_data"
    env = {"TRIMLAB_DATA": str(data_root), "OMP_NUM_THREADS": "1"}  # processes side by side: a core each
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = dict(zip(commands(), pool.map(lambda item: run(*item, root, env), commands().items()), strict=True))
        later = after_commands(first)
        first.update(zip(later, pool.map(lambda item: run(*item, root, env), later.items()), strict=True))
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for process in first.values():
        for key, jobs in process_outcomes(process).items():
            found.setdefault(key, []).extend(jobs)
    return found


def process_outcomes(process: dict) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Each option named on a command line, with the jobs that ran it (or the command's error)."""
    groups = {group for group, _ in every_option()}
    found = {}
    for arg in process["args"]:
        key, _, values = arg.partition("=")
        if key not in groups:
            continue
        for value in values.split(","):
            rows = [r for r in process["rows"] if f"{key}={value}" in r["overrides"].split()] or process["rows"]
            jobs = [(r["status"], r["error"] or "") for r in rows] or [("failed", process["last_line"])]
            found[(key, value.removesuffix("_tiny"))] = jobs
    return found


def expected_failure(group: str, option: str) -> str | None:
    """The README's reason this option cannot run on this machine, as the error says it."""
    import shutil

    import torch

    cuda = torch.cuda.is_available()
    reasons = {
        ("trainer", "gpu"): None if cuda else "needs a CUDA GPU and none is visible",
        ("strategy", "fsdp"): None if cuda else "strategy=fsdp needs GPUs",
        ("hydra/launcher", "submitit_slurm"): None if shutil.which("srun") else "needs SLURM (no srun on PATH)",
    }
    return reasons.get((group, option))


def test_every_option_ran(outcomes):
    assert every_option() - set(outcomes) == set()
    assert all(option in options(group) for group, option in RUN_ELSEWHERE)  # no stale name
    assert len(outcomes) > 60 and sum(len(jobs) for jobs in outcomes.values()) > 80


@pytest.mark.parametrize("group", sorted({group for group, _ in every_option()}))
def test_each_option_completes_or_fails_for_its_documented_reason(outcomes, group):
    reasons = [r for r in (expected_failure(*key) for key in every_option()) if r] + [MISSING_DATA]
    for option in sorted(o for g, o in every_option() if g == group):
        jobs = outcomes[(group, option)]
        own = expected_failure(group, option)
        if own:  # it must fail, and say why
            assert all(status == "failed" and own in error for status, error in jobs), (option, jobs)
            continue
        for status, error in jobs:  # a job may fail for another option's reason (trainer=gpu with debug=...)
            assert status == "completed" or any(reason in error for reason in reasons), (option, error[-2000:])
        data_absent = not REAL_DATA and all(MISSING_DATA in error for _, error in jobs)
        assert data_absent or any(status == "completed" for status, _ in jobs), (option, jobs)
