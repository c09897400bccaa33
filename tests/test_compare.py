"""trimlab-compare: reading run and sweep dirs, the Pareto front (checked against brute force), the cheapest
run within a tolerance of the best, the written files, and clear errors."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trimlab.compare import cheapest_good_enough, load_runs, main, pareto_front
from trimlab.errors import TrimlabError


def write_run(root: Path, name: str, acc: float, latency: float, status: str = "completed") -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    summary = {
        "status": status, "task_name": "t", "overrides": [f"seed={name}"],
        "metrics": {"test/acc": acc, "test/f1_macro": acc - 0.01},
        "cost": {"latency_ms_p50": latency, "params": 1000, "baseline": {"latency_ms_p50": 9.0}},
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def brute_force_front(points: list[dict]) -> set[str]:
    front = set()
    for p in points:
        beaten = any(
            q["test/acc"] >= p["test/acc"] and q["latency_ms_p50"] <= p["latency_ms_p50"]
            and (q["test/acc"] > p["test/acc"] or q["latency_ms_p50"] < p["latency_ms_p50"])
            for q in points
        )  # fmt: skip
        if not beaten:
            front.add(p["run"])
    return front


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        points = [
            {"run": str(i), "test/acc": rng.choice([0.8, 0.85, 0.9, rng.random()]), "latency_ms_p50": rng.randint(1, 6)}
            for i in range(rng.randint(1, 15))
        ]
        front = pareto_front(points, "test/acc", "latency_ms_p50")
        assert {p["run"] for p in front} == brute_force_front(points)
        assert [p["latency_ms_p50"] for p in front] == sorted(p["latency_ms_p50"] for p in front)
    # every pair of front points trades one objective for the other
    for a, b in itertools.combinations(front, 2):
        assert (a["test/acc"] - b["test/acc"]) * (a["latency_ms_p50"] - b["latency_ms_p50"]) > 0 or a == b


def test_cheapest_run_within_the_tolerance():
    runs = [
        {"run": "best", "test/acc": 0.95, "latency_ms_p50": 10.0},
        {"run": "close", "test/acc": 0.945, "latency_ms_p50": 3.0},
        {"run": "cheap", "test/acc": 0.90, "latency_ms_p50": 1.0},
    ]
    assert cheapest_good_enough(runs, "test/acc", "latency_ms_p50", 1.0)["run"] == "close"
    assert cheapest_good_enough(runs, "test/acc", "latency_ms_p50", 0.1)["run"] == "best"
    assert cheapest_good_enough(runs, "test/acc", "latency_ms_p50", 5.0)["run"] == "cheap"


def test_compare_a_sweep_writes_csv_markdown_and_the_plot(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0_a", 0.95, 10.0)
    write_run(sweep, "1_b", 0.945, 3.0)
    write_run(sweep, "2_c", 0.90, 1.0)
    write_run(sweep, "3_d", 0.80, 5.0)  # dominated by b
    write_run(sweep, "4_e", 0.0, 0.1, status="failed")
    other = write_run(tmp_path / "elsewhere", "solo", 0.5, 0.5)
    main([str(sweep), str(other), "--csv", str(tmp_path / "r.csv"), "--markdown", str(tmp_path / "r.md"),
          "--pareto", "test/acc:latency_ms_p50", "--png", str(tmp_path / "front.png")])  # fmt: skip
    out = capsys.readouterr().out
    assert "Pareto front (test/acc vs latency_ms_p50): solo, 2_c, 1_b, 0_a" in out
    assert "cheapest run within 1.0 pt of the best test/acc: 1_b" in out
    assert (tmp_path / "front.png").stat().st_size > 1000
    assert len((tmp_path / "r.csv").read_text().strip().splitlines()) == 1 + 6
    assert "| 1_b | t | completed | 0.9450 |" in (tmp_path / "r.md").read_text()
    assert len(load_runs([sweep])) == 5


def test_clear_errors_for_empty_dirs_and_unknown_keys(tmp_path, capsys):
    with pytest.raises(TrimlabError, match="holds no run summaries"):
        load_runs([tmp_path])
    write_run(tmp_path, "r", 0.9, 1.0)
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--pareto", "test/acc:latncy"])
    assert "unknown cost 'latncy'; available:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert "does not exist" in capsys.readouterr().err


def test_the_table_shows_only_the_overrides_that_differ():
    from trimlab.compare import shown_overrides

    runs = [{"overrides": "experiment=mnist compression=none seed=1"},
            {"overrides": "experiment=mnist compression=prune seed=1"}]  # fmt: skip
    assert [r["overrides"] for r in shown_overrides(runs)] == ["compression=none", "compression=prune"]
    assert runs[0]["overrides"] == "experiment=mnist compression=none seed=1"  # the CSV keeps them all
    assert shown_overrides(runs[:1])[0]["overrides"] == runs[0]["overrides"]


def last_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trimlab: error: "), lines
    return lines[0]


@pytest.mark.parametrize("spec", ["test/acc", "test/acc:", ":latency_ms_p50"])
def test_pareto_without_metric_and_cost_is_refused_and_writes_nothing(tmp_path, monkeypatch, capsys, spec):
    write_run(tmp_path / "runs", "r", 0.9, 1.0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "runs"), "--pareto", spec])
    assert exit_info.value.code != 0
    assert f"--pareto {spec} needs a metric and a cost: use --pareto METRIC:COST" in last_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--csv", "/proc/x.csv"], "cannot write --csv /proc/x.csv: /proc is not a writable directory"),
        (["--markdown", "/proc/a/x.md"], "cannot write --markdown /proc/a/x.md: /proc is not a writable directory"),
        (["--pareto", "test/acc:latency_ms_p50", "--png", "/proc/x.png"], "cannot write --png /proc/x.png"),
        (["--csv", "."], "--csv . is a directory; pass a file path"),
    ],
)
def test_unwritable_outputs_are_refused_before_any_run_is_read(tmp_path, capsys, flags, message):
    missing = tmp_path / "no_runs_here"  # read first, it would be this error instead
    with pytest.raises(SystemExit):
        main([str(missing), *flags])
    assert message in last_error_line(capsys)


@pytest.mark.slow
def test_cli_compare_to_an_unwritable_csv(tmp_path):
    from conftest import assert_clear_error, run_cli

    write_run(tmp_path / "runs", "r", 0.9, 1.0)
    result = run_cli(str(tmp_path / "runs"), "--csv", "/proc/x.csv", cwd=tmp_path, script="trimlab-compare")
    assert_clear_error(result, "cannot write --csv /proc/x.csv")


def write_timed_run(root: Path, name: str, acc: float, latency: float, threads: int = 2, **env: str) -> Path:
    """A run whose summary says how its serving cost was timed, as every run's summary does."""
    run_dir = write_run(root, name, acc, latency)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["cost"].update(latency_batch_size=1, throughput_batch_size=64, threads=threads, compiled=True,
                           train_time_s=10 * acc)  # fmt: skip
    summary["env"] = {"device": "cpu: Some CPU", "cpu_capability": "AVX2", **env}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_runs_timed_differently_are_marked_in_the_table(tmp_path, capsys):
    write_timed_run(tmp_path, "a", 0.9, 2.0)
    write_timed_run(tmp_path, "b", 0.8, 1.0, cpu_capability="AVX512")
    write_timed_run(tmp_path, "c", 0.7, 1.5, threads=8)
    main([str(tmp_path), "--markdown", str(tmp_path / "r.md")])
    out = capsys.readouterr().out
    assert "serving cost was measured in different ways (column measured)" in out
    assert "- A: latency_batch_size=1, throughput_batch_size=64, threads=2, compiled=True, cpu_capability=AVX2" in out
    assert "- B: latency_batch_size=1, throughput_batch_size=64, threads=2, compiled=True, cpu_capability=AVX512" in out
    assert "threads=8" in out
    markdown = (tmp_path / "r.md").read_text()
    assert "| measured | overrides |" in markdown and "| A | seed=a |" in markdown and "| C | seed=c |" in markdown


def test_runs_timed_alike_are_not_marked(tmp_path, capsys):
    write_timed_run(tmp_path, "a", 0.9, 2.0)
    write_timed_run(tmp_path, "b", 0.8, 1.0, device="cpu: Another CPU")  # same capability: timings compare
    main([str(tmp_path), "--pareto", "test/acc:latency_ms_p50", "--png", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "measured" not in out and "Pareto front (test/acc vs latency_ms_p50): b, a" in out


def test_pareto_refuses_runs_measured_differently_unless_mixed(tmp_path, capsys):
    write_timed_run(tmp_path / "runs", "a", 0.9, 2.0)
    write_timed_run(tmp_path / "runs", "b", 0.8, 1.0, cpu_capability="AVX512")
    png = tmp_path / "p.png"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "runs"), "--pareto", "test/acc:latency_ms_p50", "--png", str(png)])
    line = last_error_line(capsys)
    assert "these runs measured serving cost differently, so their latency_ms_p50 does not compare" in line
    assert "pass --mixed to plot them anyway" in line and "cpu_capability=AVX512" in line
    assert not png.exists()
    main([str(tmp_path / "runs"), "--pareto", "test/acc:latency_ms_p50", "--png", str(png), "--mixed"])
    assert png.is_file() and "Pareto front (test/acc vs latency_ms_p50): b, a" in capsys.readouterr().out
    main([str(tmp_path / "runs"), "--pareto", "test/acc:train_time_s", "--png", str(png)])  # a training cost
    assert "Pareto front (test/acc vs train_time_s)" in capsys.readouterr().out


def test_the_sweep_pareto_plot_refuses_jobs_measured_differently(tmp_path, caplog):
    from trimlab import sweep_report
    from trimlab.sweep import write_summary

    write_timed_run(tmp_path, "0_a", 0.9, 2.0)
    write_timed_run(tmp_path, "1_b", 0.8, 1.0, threads=4)
    rows = write_summary(tmp_path)
    assert rows[1]["measured"].startswith("latency_batch_size=1, throughput_batch_size=64, threads=4,")
    with pytest.raises(TrimlabError, match="measured serving cost differently"):
        sweep_report.write_pareto(tmp_path, rows, ["test/acc", "cost.latency_ms_p50"])
    sweep_report.report(OmegaConf.create({}), tmp_path, rows, [])  # logged, never fatal to the sweep
    assert not (tmp_path / "pareto.png").exists() and "measured serving cost differently" in caplog.text
    assert sweep_report.write_pareto(tmp_path, rows, ["cost.train_time_s"]) == tmp_path / "pareto.png"
