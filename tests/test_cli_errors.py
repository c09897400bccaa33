"""Bad input: one `trimlab: error:` line, a non-zero exit, and no summary saying completed.

Config checks run before Lightning is imported, so most cases call the preflight in-process; the rest go
through the real CLI to show the exit code and stderr a user sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clear_error, preflight_error, run_cli
from trimlab.launch import config_dir, preflight


def test_unknown_group_option_lists_the_available_ones(capsys):
    line = preflight_error(capsys, "model=transformerx")
    assert "'transformerx'" in line and "cnn" in line and "resnet" in line


def test_unknown_option_inside_a_sweep(capsys):
    line = preflight_error(capsys, "-m", "model=cnn,nope")
    assert "'nope'" in line


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("task.optimizer.lr=0", "task.optimizer.lr"),
        ("task.optimizer.lr=-0.1", "task.optimizer.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.test_fraction=0", "data.test_fraction"),
        ("trainer.max_epochs=abc", "trainer.max_epochs"),
    ],
)
def test_out_of_range_values_fail_before_training(capsys, override, key):
    assert key in preflight_error(capsys, override)


def test_unknown_key_is_one_line(capsys):
    assert "trainer.nonsense" in preflight_error(capsys, "trainer.nonsense=1")


def test_unwritable_output_dir(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = preflight_error(capsys, f"paths.output_root={blocker}/outputs")
    assert "paths.output_root" in line and str(blocker) in line


def test_resume_without_a_run(capsys, tmp_path):
    assert "last.ckpt" in preflight_error(capsys, "ckpt_path=last", f"paths.output_root={tmp_path}")


def test_valid_command_line_passes_unchanged():
    assert preflight(["model=resnet", "trainer.max_epochs=1"]) == ["model=resnet", "trainer.max_epochs=1"]


@pytest.mark.slow
def test_cli_unknown_option_exit_code(tmp_path):
    result = run_cli("data=imagenet", cwd=tmp_path)
    assert_clear_error(result, "'imagenet'", "digits", "mnist")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_cli_missing_dataset(tmp_path):
    result = run_cli("data=mnist", f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert_clear_error(result, str(tmp_path / "nowhere" / "MNIST" / "raw"), "TRIMLAB_DATA")
    summaries = list((tmp_path / "outputs").rglob("summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["status"] == "failed"


@pytest.mark.slow
def test_cli_corrupt_idx_file(tmp_path, tiny_mnist):
    labels = tiny_mnist / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:30])
    result = run_cli("data=mnist", f"data.root={tiny_mnist}", cwd=tmp_path)
    assert_clear_error(result, "train-labels-idx1-ubyte.gz", "corrupt or truncated")
    summary = json.loads(next((tmp_path / "outputs").rglob("summary.json")).read_text())
    assert summary["status"] == "failed" and "corrupt" in summary["error"]


def test_fractions_that_leave_no_train_set(capsys):
    assert "sum to less than 1" in preflight_error(capsys, "data.val_fraction=0.5", "data.test_fraction=0.5")


def test_required_value_not_set(capsys):
    assert "data.folder is required" in preflight_error(capsys, "data=image_folder")


def test_resume_inside_a_sweep_is_refused(capsys):
    assert "ckpt_path=last" in preflight_error(capsys, "-m", "ckpt_path=last", "model=cnn,resnet")


def test_full_error_keeps_the_exception(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="max_epochs"):
        preflight(["trainer.max_epochs=0"])


@pytest.mark.slow
def test_cli_help_lists_groups_and_options(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    listed = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in result.stdout.splitlines() if ": " in line}
    expected = {"data": ["digits", "sst2", "mnist"], "model": ["cnn", "transformer"], "logger": ["csv"]}
    for group, options in expected.items():
        assert all(option in listed[group] for option in options), listed.get(group)


def test_number_as_option_name(capsys):
    assert "option names are strings" in preflight_error(capsys, "precision=32")


def test_fsdp_on_cpu_points_to_model_parallel(capsys):
    assert "strategy=model_parallel" in preflight_error(capsys, "strategy=fsdp", "trainer.accelerator=cpu")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("task.optimizer.lr=nan", "task.optimizer.lr=nan is not a finite number"),
        ("task.optimizer.lr=inf", "task.optimizer.lr=inf is not a finite number"),
        ("task.label_smoothing=2", "task.label_smoothing=2 is outside [0, 1)"),
        ("seed=abc", "seed='abc' is not a whole number"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 is not a whole number"),
        ("data.batch_size=1.5", "data.batch_size=1.5 is not a whole number"),
        ("data.batch_size=nan", "data.batch_size=nan is not a whole number"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 must be >= 0"),
    ],
)
def test_values_that_fail_inside_training_fail_in_preflight(capsys, override, fragment):
    assert fragment in preflight_error(capsys, override)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer=gpu", "needs a CUDA GPU and none is visible"),
        ("trainer.devices=[0,1]", "lists GPU ids, and this machine has no GPU"),
        ("trainer.devices=64", "trainer.devices=64 starts 64 CPU processes on a machine with"),
    ],
)
def test_devices_the_machine_does_not_have(capsys, override, fragment):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert fragment in preflight_error(capsys, override)


@pytest.mark.parametrize("argv", [["hydra.run.dir=/proc/x"], ["-m", "hydra.sweep.dir=/proc/y", "model=cnn,resnet"]])
def test_run_and_sweep_dirs_that_cannot_be_written(capsys, argv):
    line = preflight_error(capsys, *argv)
    assert "is not a writable directory" in line and "/proc" in line


def test_eval_and_predict_without_arguments(capsys):
    with pytest.raises(SystemExit):
        preflight([], "eval")
    assert "run_dir is required: trimlab-eval run_dir=<path>" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preflight(["run_dir=somewhere"], "predict")
    assert "inputs is required: trimlab-predict inputs=<path>" in capsys.readouterr().err


def test_search_space_over_an_unknown_key(capsys):
    line = preflight_error(capsys, "-m", "hparams_search=optuna_tpe", '+hydra.sweeper.params.nosuch="choice(1,2)"')
    assert "the search space names nosuch, which is not in the config" in line


def test_unquoted_search_space_on_the_command_line(capsys):
    line = preflight_error(capsys, "-m", "hparams_search=optuna_tpe", "+hydra.sweeper.params.nosuch=choice(1,2)")
    assert "an unquoted choice(1,2) here sweeps a Hydra setting; quote the search space" in line


def test_glob_sweeps_list_the_group_options():
    from trimlab.launch import _variants

    variants = _variants(["model=glob(*)", "data=digits"])
    assert sorted(v[1] for v in variants) == sorted(
        f"model={p.stem}" for p in (Path(config_dir()) / "model").glob("*.yaml")
    )
    assert preflight(["-m", "model=glob(cnn*)", "data=digits"]) == ["-m", "model=glob(cnn*)", "data=digits"]


def test_trainer_argument_that_does_not_exist(tmp_path):
    from conftest import compose_train
    from trimlab.errors import ConfigError
    from trimlab.pipeline import train

    cfg = compose_train("+trainer.no_such=1", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="trainer.no_such is not an argument of lightning.pytorch.Trainer"):
        train(cfg, tmp_path, "nosuch00")


@pytest.mark.slow
def test_cli_error_after_preflight_is_one_line(tmp_path):
    result = run_cli("+trainer.no_such=1", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert_clear_error(result, "trainer.no_such is not an argument of lightning.pytorch.Trainer")
    summary = json.loads(next((tmp_path / "outputs").rglob("summary.json")).read_text())
    assert summary["status"] == "failed"


def test_slurm_launcher_without_slurm(capsys):
    import shutil

    if shutil.which("srun"):
        pytest.skip("SLURM is installed here")
    line = preflight_error(capsys, "-m", "hydra/launcher=submitit_slurm", "model=cnn,resnet")
    assert "hydra/launcher=submitit_slurm needs SLURM (no srun on PATH)" in line


def test_peer_timeout_must_be_positive(capsys):
    line = preflight_error(capsys, "strategy=ddp", "trainer.strategy.timeout=0")
    assert "trainer.strategy.timeout=0 must be a positive number of seconds" in line


def test_a_preset_that_starts_from_another_run_names_what_to_pass(capsys):
    line = preflight_error(capsys, "experiment=speech_commands_transfer")
    assert "speech_commands_transfer needs model.pretrained=<the run dir of an experiment=fsdd_cnn run>" in line
    # A fast_dev_run stands in for it (random weights), so a smoke test over every preset needs no other run.
    assert preflight(["experiment=speech_commands_transfer", "++trainer.fast_dev_run=true"])


def test_a_fraction_key_of_a_users_own_data_is_not_taken_for_a_held_out_share():
    assert preflight(["++data.noise_fraction=1.5", "++data.crop_fraction=0.9"])


def test_a_cost_figure_whose_measure_is_not_found_is_refused_before_the_fit(capsys):
    figure = "{_target_:trimlab.schema.Figure,name:energy,unit:J,better:lower,phase:serving,measure:%s}"
    line = preflight_error(capsys, f"cost.figures=[{figure % 'nowhere.joules'}]")
    assert "cost.figures[0].measure=nowhere.joules: no such function" in line
    assert "no such function" in preflight_error(capsys, f"cost.figures=[{figure % 'math.nothing_here'}]")
    assert preflight([f"cost.figures=[{figure % 'math.sqrt'}]"])  # found: the run may start
