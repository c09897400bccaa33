"""hparams_search=cheapest_within: the baseline runs first, every later trial is judged against its val/acc as an
optuna constraint, the cheapest feasible trial wins and is named with its run dir, and `patience` stops a search
that stopped finding cheaper feasible models."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from conftest import FAST, run_cli
from trimlab.sweep import write_summary

SPACE = {"compression": "choice(none, prune, quantize_static)", "++compression.prune.sparsity": "choice(0.5, 0.8)"}
# Made-up results per configuration: (size in bytes, val/acc). With tolerance 1 pt against the baseline's 0.950,
# 0.945 is feasible and 0.930 is not; the smallest model (prune 0.8) is the infeasible one.
RESULTS = {
    "compression=none": (400.0, 0.950),
    "compression=prune ++compression.prune.sparsity=0.5": (200.0, 0.945),
    "compression=prune ++compression.prune.sparsity=0.8": (100.0, 0.930),
    "compression=quantize_static": (150.0, 0.952),
}


def launcher_in(sweep_dir: Path, launched: list, results: dict):
    """Jobs that write the summary a trimlab run would (its val/acc) and return its size, as trimlab-train does."""

    def launch(batch, initial_job_idx):
        returned = []
        for number, overrides in enumerate(batch, start=initial_job_idx):
            launched.append(" ".join(overrides))
            size, val_acc = results[" ".join(overrides)]
            job_dir = sweep_dir / f"{number}_job"
            (job_dir / ".hydra").mkdir(parents=True)
            (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
            summary = {"status": "completed", "metrics": {"val/acc": val_acc}, "cost": {"size_bytes": size}}
            (job_dir / "summary.json").write_text(json.dumps(summary))
            hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
            returned.append(SimpleNamespace(status=SimpleNamespace(name="COMPLETED"), return_value=size,
                                           hydra_cfg=hydra_cfg))  # fmt: skip
        return returned

    return launch


def constrained_sweeper(sweep_dir: Path, launched: list, n_trials: int, patience: int | None = None,
                        results: dict = RESULTS):  # fmt: skip
    from hydra_plugins.trimlab_sweeper.optuna_sweeper import OptunaSweeper

    within = {"metric": "val/acc", "tolerance_pt": 1.0, "baseline": ["compression=none"], "patience": patience}
    sweeper = OptunaSweeper(study_name="cw", sampler="tpe", direction="minimize", n_trials=n_trials, params=SPACE,
                            within=within)  # fmt: skip
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}},
                                       "optimized_metric": "cost.size_bytes"})  # fmt: skip
    sweeper.hydra_context = SimpleNamespace(config_loader=None)
    sweeper.launcher = SimpleNamespace(launch=launcher_in(sweep_dir, launched, results))
    return sweeper


def test_the_constrained_search_marks_infeasible_trials_and_names_the_cheapest_feasible_one(tmp_path, capsys):
    import optuna

    launched: list = []
    constrained_sweeper(tmp_path, launched, n_trials=10).sweep([])
    assert launched[0] == "compression=none"  # the baseline first
    assert sorted(launched) == sorted(RESULTS)  # then every other configuration once: the space is spent
    study = optuna.load_study(study_name="cw", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    ran = {" ".join(f"{k}={v}" for k, v in t.params.items()): t for t in study.trials if "run_dir" in t.user_attrs}
    for overrides, (_, val_acc) in RESULTS.items():
        trial = ran[overrides]
        # optuna's own constraint record, which TPE models: feasible when <= 0
        assert trial.constraints == {"within_tolerance": pytest.approx(100 * (0.950 - val_acc) - 1.0)}
        assert trial.user_attrs["metric"] == val_acc
    assert ran["compression=prune ++compression.prune.sparsity=0.8"].constraints["within_tolerance"] > 0
    assert all(ran[k].constraints["within_tolerance"] <= 0 for k in RESULTS if not k.endswith("0.8"))

    within = OmegaConf.load(tmp_path / "optimization_results.yaml").within
    assert (within.feasible, within.infeasible, within.baseline_value) == (3, 1, 0.950)
    winner = within.winner  # the cheapest feasible model, not the cheapest one (100 B, 2 pt below the baseline)
    assert winner.value == 150.0 and winner.params == {"compression": "quantize_static"}
    assert Path(winner.run_dir) == (tmp_path / f"{winner.number}_job").absolute()
    assert f"trial {winner.number} (cost.size_bytes 150, val/acc 0.9520)" in capsys.readouterr().out
    assert write_summary(tmp_path) and json.loads((tmp_path / "sweep_summary.json").read_text())["within"] == {
        **OmegaConf.to_container(within)
    }


def judged(value: float, constraint: float):
    return SimpleNamespace(
        state=SimpleNamespace(name="COMPLETE"), value=value, constraints={"within_tolerance": constraint}
    )


def test_patience_counts_trials_since_the_last_cheaper_feasible_model():
    from hydra_plugins.trimlab_sweeper.constrained import Within

    within = Within(patience=2)
    trials = [judged(400, -1), judged(200, -0.5), judged(100, 1.0)]  # the cheapest is infeasible: no gain
    assert not within.stalled(trials, maximize=False)
    assert within.stalled([*trials, judged(300, -1)], maximize=False)  # two in a row without a cheaper one
    assert not within.stalled([*trials, judged(150, -1)], maximize=False)  # cheaper and feasible: reset
    assert not within.stalled([judged(400, 2.0)] * 5, maximize=False)  # nothing feasible yet: keep looking
    assert within.stalled([judged(10, -1), judged(5, -1), judged(8, -1)], maximize=True)  # throughput: higher


def test_patience_stops_the_sweep_at_the_first_stall(tmp_path, caplog):
    # The baseline is the smallest feasible model here: after it, two trials in a row find nothing cheaper.
    caplog.set_level(logging.INFO)
    results = {**RESULTS, "compression=none": (120.0, 0.950)}
    launched: list = []
    constrained_sweeper(tmp_path, launched, n_trials=10, patience=2, results=results).sweep([])
    assert len(launched) == 3 and launched[0] == "compression=none"  # of 4 configurations
    assert "no cheaper feasible model in the last 2 trials" in caplog.text
    assert OmegaConf.load(tmp_path / "optimization_results.yaml").within.winner.number == 0


def test_a_baseline_outside_the_search_space_is_refused_before_any_trial(tmp_path, capsys):
    launched: list = []
    sweeper = constrained_sweeper(tmp_path, launched, n_trials=2)
    sweeper.within.baseline = ["compression=nosuch"]
    with pytest.raises(SystemExit) as stopped:
        sweeper.sweep([])
    assert stopped.value.code == 1 and not launched
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("trimlab: error: hydra.sweeper.within.baseline: 'compression=nosuch' is not among")


@pytest.mark.slow
def test_cheapest_within_runs_on_digits_from_the_command_line(tmp_path):
    one_epoch = ["++compression.prune_structured.epochs=1", "++compression.prune.epochs=1"]
    search = ["hparams_search=cheapest_within", "hydra.sweeper.n_trials=4", *FAST, "trainer.max_epochs=1",
              "model.widths=[8,16]", "cost.compile=false", *one_epoch]  # fmt: skip
    result = run_cli(*search, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "train" / "sweeps" / "cheapest_within"
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    assert rows[0]["overrides"].endswith("compression=none")  # the baseline ran first
    within = summary["within"]
    assert within["baseline_value"] == rows[0]["val/acc"] and within["feasible"] + within["infeasible"] == 4
    winner = within["winner"]
    row = next(r for r in rows if r["run_dir"] == winner["run_dir"])  # the winner's run dir is one of the jobs
    assert (
        row["cost.size_bytes"]
        == winner["value"]
        == min(r["cost.size_bytes"] for r in rows if r["val/acc"] >= within["baseline_value"] - 0.01)
    )
    assert f"run dir: {winner['run_dir']}" in result.stdout
