"""Sweeps: the optuna sweeper completes, records a failed trial and goes on, and resumes a killed study
without re-running finished trials; every sweep writes sweep_summary.json/.csv as its jobs end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import BIN, FAST, assert_clear_error, cli_env, run_cli

TINY = ["trainer.max_epochs=1", *FAST[1:], "model.widths=[8,16]", "cost.latency_repeats=2"]


def sweep_dir(cwd: Path, study: str) -> Path:
    return cwd / "outputs" / "train" / "sweeps" / study


def rows(path: Path) -> list[dict]:
    summary = path / "sweep_summary.json"
    return json.loads(summary.read_text())["rows"] if summary.is_file() else []


@pytest.mark.slow
def test_optuna_sweep_completes_and_records_a_failed_trial(tmp_path):
    env = {"TRIMLAB_DATA": str(tmp_path / "no_data_here")}  # mnist trials fail at run time: no dataset
    result = run_cli("hparams_search=optuna_tpe", "hydra.sweeper.n_trials=6", "hydra.sweeper.study_name=s1",
                     "data=choice(digits,mnist)", *TINY, cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    jobs = rows(sweep_dir(tmp_path, "s1"))
    assert len(jobs) == 6, result.stderr[-3000:]
    failed = [j for j in jobs if j["status"] != "completed"]
    completed = [j for j in jobs if j["status"] == "completed"]
    assert failed and completed  # a failing trial never stopped the others
    assert all("data=mnist" in j["overrides"] and "MNIST" in j["error"] for j in failed)
    assert all(j["test/acc"] > 0.1 and j["cost.latency_ms_p50"] > 0 for j in completed)
    assert result.returncode != 0  # the sweep says it had failures
    assert f"{len(failed)} sweep job(s) failed" in result.stderr.strip().splitlines()[-1]
    csv_lines = (sweep_dir(tmp_path, "s1") / "sweep_summary.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("job,status,error,overrides")
    results = (sweep_dir(tmp_path, "s1") / "optimization_results.yaml").read_text()
    assert "completed: " + str(len(completed)) in results


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    command = [str(BIN / "trimlab-train"), "hparams_search=random", "hydra.sweeper.n_trials=5",
               "hydra.sweeper.study_name=s2", *TINY]  # fmt: skip
    env = cli_env(tmp_path)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while len([r for r in rows(sweep_dir(tmp_path, "s2")) if r["status"] == "completed"]) < 2:
        assert time.monotonic() < deadline and process.poll() is None, "the sweep did not get going"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {r["job"] for r in rows(sweep_dir(tmp_path, "s2")) if r["status"] == "completed"}
    assert 2 <= len(before) < 5

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    after = [r for r in rows(sweep_dir(tmp_path, "s2")) if r["status"] == "completed"]
    assert len(after) == 5
    assert before <= {r["job"] for r in after}  # the finished trials kept their run dirs, not re-run
    numbers = sorted(int(r["job"].split("_")[0]) for r in after)
    assert len(set(numbers)) == 5  # job numbers continue after the kill: no run dir collides
    interrupted = [r for r in rows(sweep_dir(tmp_path, "s2")) if r["status"] == "interrupted"]
    assert len(interrupted) <= 1  # the trial the kill cut short, kept as a record


def test_an_unknown_optimized_metric_is_refused(tmp_path):
    result = run_cli("hparams_search=optuna_tpe", "optimized_metric=test/accuracy", *TINY, cwd=tmp_path)
    assert_clear_error(result, "optimized_metric='test/accuracy' is not a summary value")
    assert not (tmp_path / "outputs").exists()


def test_a_search_space_over_an_unknown_key_is_refused(tmp_path):
    result = run_cli("hparams_search=optuna_tpe", "task.optimizer.lrr=interval(0.1,0.2)", *TINY, cwd=tmp_path)
    assert_clear_error(result, "task.optimizer.lrr")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_basic_sweep_writes_its_summary_and_pareto_plot_also_to_wandb(tmp_path):
    # Each job names its own dir, as each preset does under -m 'experiment=glob(*)': the sweep still lists both.
    result = run_cli("-m", "task_name=alpha,beta", "logger=wandb", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("alpha", "beta"):
        assert len(list((tmp_path / "outputs" / name / "multirun").glob("*/*/summary.json"))) == 1
    (sweep,) = (tmp_path / "outputs" / "train" / "multirun").iterdir()
    jobs = rows(sweep)
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert [Path(j["run_dir"]).parts[-4] for j in jobs] == ["alpha", "beta"]
    assert "sweep: 2 jobs, 0 failed" in result.stdout
    sweeper = OmegaConf.load(sweep / "multirun.yaml").hydra.sweeper._target_
    assert sweeper == "hydra_plugins.trimlab_sweeper.basic_sweeper.BasicSweeper"  # conf/hydra/sweeper/basic.yaml
    assert (sweep / "pareto.png").stat().st_size > 0
    assert "cheapest run within 1.0 pt of the best test/acc" in result.stdout
    (sweep_run,) = (sweep / "wandb").glob("offline-run-*")  # the sweep's own W&B run, beside its trials'
    inspected = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--summary", "--json", str(sweep_run)],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    recorded = json.loads(inspected.stdout)
    assert recorded["summary"]["pareto"]["_type"].startswith("image") and recorded["summary"]["jobs"] == 2
    assert recorded["summary"]["sweep_summary"]["_type"] == "table-file"


@pytest.mark.slow
def test_joblib_jobs_run_side_by_side_on_their_share_of_the_cores(tmp_path):
    # Hydra's joblib config (n_jobs=-1: as many jobs at once as cores), as users type it
    result = run_cli("-m", "hydra/launcher=joblib", "model=cnn,resnet", *TINY[:-2], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "train" / "multirun").iterdir())
    jobs = rows(sweep)
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    threads = [json.loads(Path(j["run_dir"], "summary.json").read_text())["env"]["threads"] for j in jobs]
    assert threads == [1, 1]  # one job per core at once: one thread each


def test_the_basic_sweeper_composes_each_job_once(monkeypatch):
    from types import SimpleNamespace

    from hydra.core.plugins import Plugins
    from omegaconf import OmegaConf

    plugins = Plugins.instance()  # first: Hydra's plugin scan re-imports its sweeper module, as in a real run
    from hydra_plugins.trimlab_sweeper.basic_sweeper import BasicSweeper

    composed: list[tuple] = []

    def compose(master_config, sweep_overrides):
        composed.append(tuple(sweep_overrides))
        return OmegaConf.create({"overrides": list(sweep_overrides)})

    loader = SimpleNamespace(load_sweep_config=compose)
    config = OmegaConf.create({"hydra": {}})

    class BasicLauncher:  # launches as Hydra's does: composes each job through the context's loader
        def launch(self, batch, initial_job_idx):
            return [loader.load_sweep_config(config, list(overrides)) for overrides in batch]

    monkeypatch.setattr(plugins, "instantiate_launcher", lambda **kwargs: BasicLauncher())
    sweeper = BasicSweeper(max_batch_size=None)
    sweeper.setup(hydra_context=SimpleNamespace(config_loader=loader), task_function=None, config=config)
    batch = [["seed=1"], ["seed=2"]]
    sweeper.validate_batch_is_legal(batch)  # composes both: a bad combination fails before any job runs
    launched = sweeper.launcher.launch(batch, initial_job_idx=0)
    assert composed == [("seed=1",), ("seed=2",)]  # not composed again at launch
    assert [c.overrides for c in launched] == [["seed=1"], ["seed=2"]]
    assert sweeper.launcher.launch([["seed=3"]], 2)[0].overrides == ["seed=3"]  # an unvalidated job still composes


def test_sweep_rows_redact_secret_overrides_and_follow_rewritten_summaries(tmp_path):
    from trimlab.report import write_json
    from trimlab.sweep import job_row

    job = tmp_path / "0_abc"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=1\n- +logger.x.api_key=sk-123\n")
    write_json(job / "summary.json", {"status": "running"})
    assert job_row(job)["status"] == "interrupted"
    assert job_row(job)["overrides"] == "seed=1 +logger.x.api_key=***"
    write_json(job / "summary.json", {"status": "completed", "metrics": {"test/acc": 0.5}})
    assert job_row(job)["status"] == "completed" and job_row(job)["test/acc"] == 0.5  # not the cached row


def test_a_relative_sweep_dir_lists_each_job_once(tmp_path, monkeypatch):
    from trimlab.report import write_json
    from trimlab.sweep import write_summary

    monkeypatch.chdir(tmp_path)
    for name in ("0_a", "1_b"):
        write_json(tmp_path / "sweep" / name / "summary.json", {"status": "completed"})
    started = [tmp_path / "sweep" / "0_a", tmp_path / "sweep" / "1_b"]  # as Hydra gives them: absolute
    rows = write_summary(Path("sweep"), started)
    assert [r["job"] for r in rows] == ["0_a", "1_b"]
    assert json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())["jobs"] == 2
