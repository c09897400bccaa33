"""Multi-process runs on CPU (gloo): one run dir and summary, synchronised metrics, checkpoints eval can load."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hydra.utils import instantiate
from lightning.pytorch import strategies
from torch.multiprocessing.spawn import ProcessRaisedException

from conftest import BIN, FAST, REPO, assert_clear_error, compose_train, run_cli
from trimlab import distributed
from trimlab.distributed import PeerTimeoutError
from trimlab.errors import TrimlabError
from trimlab.pipeline import train

pytestmark = pytest.mark.slow
TWO_EPOCHS = [*FAST, "callbacks.early_stopping=null"]
# Swept by `trimlab-train -m` in one fixture below; tests/test_every_option.py counts them as run here.
SWEPT_STRATEGIES = ("ddp", "ddp_spawn", "model_parallel")
MULTI_PROCESS = sorted(path.stem for path in (REPO / "conf" / "strategy").glob("*.yaml") if path.stem != "auto")


def completed(result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    return summary


@pytest.fixture(scope="module")
def single_and_ddp(tmp_path_factory):
    """The same global batch (32) as 1 process × 32 and 2 processes × 16; the multi-process strategies run as one
    sweep (a sweep must give one run per job, not one per rank)."""
    cwd = tmp_path_factory.mktemp("ddp")
    single = completed(run_cli(*TWO_EPOCHS, "data.batch_size=32", cwd=cwd))
    result = run_cli("-m", f"strategy={','.join(SWEPT_STRATEGIES)}", *TWO_EPOCHS, "data.batch_size=16", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [p for p in (cwd / "outputs").rglob("summary.json") if "multirun" in p.parts]
    jobs = [json.loads(p.read_text()) for p in paths]
    by_strategy = {next(o for o in job["overrides"] if o.startswith("strategy=")): job for job in jobs}
    assert len(jobs) == 3 and all(job["status"] == "completed" for job in jobs)
    assert all("data.batch_size=16" in job["overrides"] for job in jobs)  # each job's own, though a fresh process
    return cwd, single, {name.removeprefix("strategy="): job for name, job in by_strategy.items()}


def test_ddp_writes_one_run_dir_and_summary(single_and_ddp):
    cwd, _, jobs = single_and_ddp
    ddp = jobs["ddp"]
    assert ddp["env"]["world_size"] == 2 and ddp["env"]["strategy"] == "DDPStrategy"
    assert ddp["cost"]["processes"] == 2 and ddp["cost"]["peak_mem_mb_total"] > ddp["cost"]["peak_mem_mb"]
    assert len(list((cwd / "outputs").rglob("summary.json"))) == 4  # the single run's and one per sweep job
    assert ddp["metrics"]["test_samples"] == 360  # gathered from both ranks


def test_ddp_matches_one_process_within_tolerance(single_and_ddp):
    _, single, jobs = single_and_ddp
    # Same data order and global batch; BatchNorm statistics are per rank, so not bit-equal.
    assert abs(single["metrics"]["test/acc"] - jobs["ddp"]["metrics"]["test/acc"]) <= 0.05
    # DistributedSampler pads an odd train set (1,257) by one sample per epoch.
    assert 0 <= jobs["ddp"]["cost"]["train_samples"] - single["cost"]["train_samples"] <= 2


@pytest.mark.parametrize("name", ["ddp", "model_parallel"])
def test_eval_reproduces_a_multi_process_run(single_and_ddp, name):
    cwd, _, jobs = single_and_ddp
    result = run_cli(f"run_dir={jobs[name]['run_dir']}", cwd=cwd, script="trimlab-eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((Path(jobs[name]["run_dir"]) / "eval.json").read_text())["reproduces"] is True


def test_model_parallel_shards_on_cpu(single_and_ddp):
    summary = single_and_ddp[2]["model_parallel"]
    assert summary["env"]["strategy"] == "ModelParallelStrategy" and summary["env"]["world_size"] == 2


def test_ddp_and_ddp_spawn_inside_a_sweep_give_one_run_per_job(single_and_ddp):
    _, _, jobs = single_and_ddp
    assert all(job["env"]["world_size"] == 2 for job in jobs.values())  # four runs, not eight: ranks ran no sweep
    methods = [jobs[name]["config"]["trainer"]["strategy"]["start_method"] for name in ("ddp", "ddp_spawn")]
    assert methods == ["popen", "spawn"]


@pytest.mark.parametrize("precision, recorded", [("bf16-mixed", "bf16-mixed"), ("16-mixed", "bf16-mixed")])
def test_mixed_precision_on_cpu_records_what_ran(tmp_path, precision, recorded):
    cfg = compose_train(f"precision={precision}", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                        output_dir=tmp_path)  # fmt: skip
    summary = train(cfg, tmp_path, "prec0000")
    assert summary["status"] == "completed" and summary["env"]["precision"] == recorded


def test_a_node_that_never_comes_fails_within_the_timeout(tmp_path):
    """Two nodes asked for, one started: rank 0 waits `trainer.strategy.timeout` seconds, not forever."""
    started = time.monotonic()
    result = run_cli(*FAST, "strategy=ddp", "trainer.num_nodes=2", "trainer.strategy.timeout=5", cwd=tmp_path)
    line = assert_clear_error(result, "no peer joined within 5 s", "trainer.strategy.timeout=<seconds>")
    assert "trainer.num_nodes=2" in line and "MASTER_PORT=" in line
    assert time.monotonic() - started < 120
    (summary_path,) = (tmp_path / "outputs").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("PeerTimeoutError: no peer joined within 5 s")


@pytest.mark.parametrize("name", MULTI_PROCESS)
def test_every_multi_process_strategy_waits_at_most_five_minutes(tmp_path, name):
    strategy = instantiate(compose_train(f"strategy={name}", output_dir=tmp_path).trainer.strategy)
    assert timedelta(0) < strategy._timeout <= timedelta(minutes=5)
    assert isinstance(strategy, getattr(strategies, type(strategy).__name__))  # Lightning's class, by its name


def test_a_spawned_workers_timeout_reaches_the_main_process_as_its_message():
    message = "no peer joined within 5 s: rank 1 of 4 waited at MASTER_ADDR=127.0.0.1 MASTER_PORT=1"
    trace = f"Traceback (most recent call last):\n  ...\n{PeerTimeoutError.__module__}.PeerTimeoutError: {message}\n"
    assert distributed.worker_error(ProcessRaisedException(trace, 1, 123)) == message
    assert distributed.worker_error(ProcessRaisedException("Traceback ...\nValueError: x", 1, 123)) is None
    with pytest.raises(TrimlabError, match="trainer.strategy.timeout=0 must be a positive number of seconds"):
        distributed.as_timedelta(0)


def test_two_nodes_by_torchrun_match_one_node_with_two_devices(single_and_ddp, tmp_path):
    ddp = single_and_ddp[2]["ddp"]
    run_dir = tmp_path / "two_nodes"
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    port = str(29500 + os.getpid() % 1000)
    nodes = []
    for rank in (0, 1):
        own = [] if rank == 0 else ["hydra.output_subdir=null", "hydra.job.name=train_node1"]
        command = [
            str(BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
            "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "trimlab.train",
            *TWO_EPOCHS, "strategy=ddp", "trainer.devices=1", "trainer.num_nodes=2", "data.batch_size=16",
            f"hydra.run.dir={run_dir}", *own,
        ]  # fmt: skip
        nodes.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(2)  # node 0 hosts the rendezvous store: let it listen first
    try:  # node 1 first: if it dies, node 0 would wait for it until the timeout and hide why
        second = nodes[1].communicate(timeout=300)
        if nodes[1].returncode != 0:
            nodes[0].kill()
        outputs = [nodes[0].communicate(timeout=300), second]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], (outputs[0][1][-2000:], outputs[1][1][-2000:])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"]["num_nodes"] == 2 and summary["env"]["world_size"] == 2
    for key in ("test/acc", "test/f1_macro", "test/auroc_macro"):
        assert summary["metrics"][key] == pytest.approx(ddp["metrics"][key], abs=1e-6), key


def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", "model=cnn,resnet", "trainer.max_epochs=1", *FAST[1:],
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("summary.json")]
    assert sorted(s["status"] for s in summaries) == ["completed", "completed"]
    assert list((tmp_path / "outputs").rglob(".submitit"))  # the jobs really went through submitit
    sweep = json.loads(next((tmp_path / "outputs").rglob("sweep_summary.json")).read_text())
    assert sweep["jobs"] == 2 and sweep["failed"] == 0  # rows written by each job, in its own process


def test_compile_records_first_step_apart_from_steady_state(tmp_path):
    summary = completed(run_cli(*FAST, "trainer.max_epochs=1", "model.compile=true", cwd=tmp_path, timeout=600))
    cost = summary["cost"]
    assert cost["first_step_s"] > 10 * cost["step_time_ms_median"] / 1e3  # the first step paid for compiling
