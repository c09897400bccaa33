"""Ctrl-C during an optuna sweep: the running trial is recorded as interrupted, the sweep exits 130 with one line
saying how to resume, and the re-run retries that configuration once, repeats no completed one and exits 0."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from conftest import BIN, FAST, cli_env
from trimlab.errors import TrimlabError

TESTS = Path(__file__).resolve().parent
SPACE = {"task.optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "task.optimizer.weight_decay": "interval(0.0, 0.1)"}


class PauseInFit:
    """A callback that holds job `job` of a sweep inside Trainer.fit until a signal comes, touching `marker` so
    the test knows when to send it: the signal lands mid-fit, where Lightning catches KeyboardInterrupt."""

    def __new__(cls, job: int, marker: str):
        import lightning.pytorch as pl
        from hydra.core.hydra_config import HydraConfig

        class Pause(pl.Callback):
            def on_train_batch_start(self, *args) -> None:
                if HydraConfig.get().job.num != job:
                    return
                Path(marker).touch()
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    time.sleep(0.05)

        return Pause()


def study_trials(sweep: Path) -> list[tuple[int, str, dict, dict]]:
    """(number, state, params, system attrs) per trial, read from optuna.db as stored."""
    import optuna

    study = optuna.load_study(study_name="sig", storage=f"sqlite:///{sweep / 'optuna.db'}")
    return [(t.number, t.state.name, t.params, t.system_attrs) for t in study.get_trials(deepcopy=False)]


@pytest.mark.slow
def test_sigint_mid_trial_records_it_interrupted_and_the_rerun_retries_it_once(tmp_path):
    marker = tmp_path / "in_fit"
    command = [str(BIN / "trimlab-train"), "hparams_search=random", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.study_name=sig", "data.batch_size=choice(256)", "model.widths=[8,16]",
               "trainer.max_epochs=1", *FAST[1:], "+callbacks.pause._target_=test_sweep_signals.PauseInFit",
               "+callbacks.pause.job=1", f"+callbacks.pause.marker={marker}"]  # fmt: skip
    env = cli_env(tmp_path, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    with open(tmp_path / "out1.txt", "w") as out, open(tmp_path / "err1.txt", "w") as err:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "err1.txt").read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole group
        assert process.wait(timeout=120) == 130
    output = (tmp_path / "out1.txt").read_text() + (tmp_path / "err1.txt").read_text()
    # The run records itself interrupted (trimlab's handler, not Lightning's "Detected KeyboardInterrupt" exit 1).
    assert "Detected KeyboardInterrupt" not in output
    last = (tmp_path / "err1.txt").read_text().strip().splitlines()[-1]
    assert last.startswith("trimlab: error: sweep interrupted by SIGINT in trial 1 (")
    assert "resume it by running the same command again: finished trials are kept" in last

    sweep = tmp_path / "outputs" / "train" / "sweeps" / "sig"
    trials = study_trials(sweep)
    assert [(n, state) for n, state, _, _ in trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "WAITING")]
    assert trials[1][3]["interrupted"] == "interrupted by SIGINT"
    assert trials[2][3]["fixed_params"] == trials[1][2]  # queued: the re-run runs that configuration first
    rows = json.loads((sweep / "sweep_summary.json").read_text())["rows"]
    assert [(r["job"][:2], r["status"]) for r in rows] == [("0_", "completed"), ("1_", "interrupted")]
    assert rows[1]["error"].startswith("interrupted by SIGINT at epoch 0, step ")  # the run's own record
    assert "ckpt_path=last" not in rows[1]["error"]  # a sweep resumes by running the same command, not by this

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = study_trials(sweep)
    assert [(n, state) for n, state, _, _ in trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE"), (3, "COMPLETE")]
    completed = [json.dumps(params, sort_keys=True) for _, state, params, _ in trials if state == "COMPLETE"]
    assert len(set(completed)) == 3  # no configuration ran to completion twice
    assert trials[2][2] == trials[1][2]  # the interrupted configuration was retried, once
    rows = json.loads((sweep / "sweep_summary.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["completed", "interrupted", "completed", "completed"]
    assert "sweep: 4 jobs, 0 failed, 1 interrupted" in rerun.stdout


def sweeper_in(tmp_path: Path, launch, n_trials: int = 2, params: dict | None = None):
    """An OptunaSweeper on a study in tmp_path, launching jobs with `launch(batch, initial_job_idx)`."""
    from hydra_plugins.trimlab_sweeper.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(study_name="unit", sampler="random", n_trials=n_trials, params=params or SPACE)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "optimized_metric": "test/acc"})
    sweeper.hydra_context = SimpleNamespace(config_loader=None)
    sweeper.launcher = SimpleNamespace(launch=launch)
    return sweeper


def completed_job(batch, initial_job_idx):
    return [SimpleNamespace(status=SimpleNamespace(name="COMPLETED"), return_value=0.5) for _ in batch]


def lightning_exit(batch, initial_job_idx):
    """What Trainer.fit does on Ctrl-C: catch the KeyboardInterrupt, then sys.exit(1). The sweep's own SIGINT
    handler is called as the interpreter would call it on a Ctrl-C; a real signal is sent in the test above, to a
    process of its own (one sent to this test process can crash it once ONNX Runtime and OpenVINO have run in it)."""
    try:
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        time.sleep(5)
    except KeyboardInterrupt:
        sys.exit(1)


class Interrupted(TrimlabError):
    """As trimlab.errors.Interrupted: a run stopped by a signal, with exit code 128 + the signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def interrupted_job(batch, initial_job_idx):
    """A job that raised Interrupted: Hydra keeps a job's exception as its failed return value."""
    err = Interrupted("interrupted by SIGTERM at epoch 0, step 3", 143)
    return [SimpleNamespace(status=SimpleNamespace(name="FAILED"), _return_value=err)]


def job_exit(batch, initial_job_idx):
    """A job that ended the process itself, with the signal's exit code."""
    raise SystemExit(143)


def keyboard_interrupt(batch, initial_job_idx):
    raise KeyboardInterrupt


@pytest.mark.parametrize(("launch", "name", "code"), [
    (keyboard_interrupt, "SIGINT", 130), (lightning_exit, "SIGINT", 130), (interrupted_job, "SIGTERM", 143),
    (job_exit, "SIGTERM", 143),
])  # fmt: skip
def test_an_interrupted_trial_is_recorded_and_queued_to_run_again(tmp_path, capsys, launch, name, code):
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        sweeper_in(tmp_path, launch).sweep([])
    assert stopped.value.code == code
    assert signal.getsignal(signal.SIGINT) is handler  # the sweep's own handlers are gone
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"trimlab: error: sweep interrupted by {name} in trial 0; resume it by running the same")
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        states = [s for (s,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["FAIL", "WAITING"]  # trial 0 interrupted, its configuration queued as trial 1

    sweeper = sweeper_in(tmp_path, completed_job)
    sweeper.sweep([])  # the re-run: the retry, then one new trial
    trials = study_trials_of(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].system_attrs["interrupted"] == f"interrupted by {name}"
    assert trials[1].params == trials[0].params != trials[2].params


def study_trials_of(path: Path):
    import optuna

    return optuna.load_study(study_name="unit", storage=f"sqlite:///{path / 'optuna.db'}").get_trials()


def test_a_resumed_study_does_not_replay_the_first_runs_proposals(tmp_path):
    sweeper_in(tmp_path, completed_job, n_trials=2).sweep([])
    sweeper_in(tmp_path, completed_job, n_trials=4).sweep([])  # same seed, as the same command would give
    params = [json.dumps(t.params, sort_keys=True) for t in study_trials_of(tmp_path)]
    assert len(params) == 4 and len(set(params)) == 4


def test_proposals_repeating_completed_trials_are_not_run(tmp_path, caplog):
    launched: list = []

    def launch(batch, initial_job_idx):
        launched.extend(batch)
        return completed_job(batch, initial_job_idx)

    sweeper_in(tmp_path, launch, n_trials=5, params={"data.batch_size": "choice(32, 64)"}).sweep([])
    assert sorted(launched) == [["data.batch_size=32"], ["data.batch_size=64"]]  # then nothing new was left
    assert "the search space looks exhausted" in caplog.text
    trials = study_trials_of(tmp_path)
    run = [t for t in trials if "duplicate_of" not in t.system_attrs]
    assert len(run) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    for repeat in (t for t in trials if "duplicate_of" in t.system_attrs):  # answered from the earlier result
        twin = trials[repeat.system_attrs["duplicate_of"]]
        assert repeat.params == twin.params and repeat.values == twin.values
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.completed == 2 and [b.number for b in best.best] == [run[0].number]  # a trial that ran, once


def test_a_stage_s_knobs_are_sampled_only_in_trials_that_pick_the_stage(tmp_path):
    launched: list = []

    def launch(batch, initial_job_idx):
        launched.extend(batch)
        return completed_job(batch, initial_job_idx)

    space = {"compression": 'choice(none, prune, quantize_static, "[prune,quantize_static]")',
             "++compression.prune.sparsity": "choice(0.5, 0.8)", "++compression.quantize_static.calibration_batches":
             "choice(4, 8)", "model.widths": 'choice("[8,16]", "[16,32]")'}  # fmt: skip
    sweeper_in(tmp_path, launch, n_trials=30, params=space).sweep([])
    configurations = [dict(o.split("=", 1) for o in job) for job in launched]
    for config in configurations:
        stages = config["compression"].strip("[]").split(",")
        assert ("++compression.prune.sparsity" in config) == ("prune" in stages), config
        assert ("++compression.quantize_static.calibration_batches" in config) == ("quantize_static" in stages)
    # none: 2 widths; each stage alone: its 2 knob values x 2 widths; both: 2 x 2 x 2. Each ran once, then the
    # space was spent (as 4 x 2 x 2 x 2 = 32 unconditional configurations, it would have run all 30 trials).
    assert len(configurations) == 2 + 4 + 4 + 8 == len({json.dumps(c, sort_keys=True) for c in configurations})


def test_a_trial_killed_after_its_job_completed_keeps_its_result_on_resume(tmp_path):
    """The kill lands after the job wrote its completed summary and before the sweeper told the study: the re-run
    takes the result from the run dir instead of running that configuration again."""

    def completes_then_killed(batch, initial_job_idx):
        job_dir = tmp_path / f"{initial_job_idx}_abc123"
        job_dir.mkdir()
        (job_dir / "summary.json").write_text(json.dumps({"status": "completed", "metrics": {"test/acc": 0.75}}))
        raise RuntimeError("the process was killed here")  # nothing tells the study: trial 0 stays running

    with pytest.raises(RuntimeError):
        sweeper_in(tmp_path, completes_then_killed).sweep([])
    launched: list = []

    def launch(batch, initial_job_idx):
        launched.extend(batch)
        return completed_job(batch, initial_job_idx)

    sweeper_in(tmp_path, launch).sweep([])
    trials = study_trials_of(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].value == 0.75 and "interrupted" not in trials[0].system_attrs
    assert len(launched) == 1  # only the one trial still missing ran
