"""One answer to "is this run multi-process?", shared by the compression checks and the sweep's relaunch."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from trimlab.compression_checks import check_compression
from trimlab.errors import ConfigError
from trimlab.processes import device_count, distributed_strategy, multi_process
from trimlab.train import relaunches_script

DDP = {"_target_": "trimlab.distributed.DDPStrategy", "start_method": "popen"}
SPAWN = {"_target_": "trimlab.distributed.DDPStrategy", "start_method": "spawn"}


def config(**trainer) -> OmegaConf:
    return OmegaConf.create({"trainer": {"accelerator": "cpu", "strategy": "auto", "num_nodes": 1, **trainer}})


@pytest.mark.parametrize(
    ("trainer", "many"),
    [
        ({"devices": 1}, False),
        ({"devices": "1"}, False),
        ({"devices": [0]}, False),  # GPU 0 alone: one device
        ({"devices": "0,"}, False),  # Lightning's string for GPU 0 alone
        ({"devices": [0, 1]}, True),
        ({"devices": "0,1"}, True),
        ({"devices": 2}, True),
        ({"devices": "2"}, True),
        ({"devices": "auto"}, False),  # on CPU Lightning runs one process
        ({"devices": None}, False),
        ({"devices": -1}, False),  # "every device": one CPU process
        ({"devices": 1, "num_nodes": 2}, True),
        ({"devices": 2, "strategy": DDP}, True),
        ({"devices": 1, "strategy": DDP}, False),  # one rank: wrapped, but one process
        ({"devices": 2, "strategy": SPAWN}, True),
        ({"devices": 2, "strategy": "fsdp"}, True),
        ({"devices": 2, "strategy": {"_target_": "trimlab.distributed.ModelParallelStrategy"}}, True),
        ({"devices": "auto", "strategy": "ddp"}, False),
    ],
)
def test_multi_process_is_one_predicate(trainer, many):
    assert multi_process(config(**trainer)) is many


def test_auto_devices_on_a_gpu_accelerator_count_the_visible_gpus(monkeypatch):
    import trimlab.processes as processes

    monkeypatch.setattr(processes, "_visible_gpus", lambda: 4)
    assert device_count("auto", "gpu") == 4 and device_count(-1, "auto") == 4
    assert device_count("auto", "cpu") == 1
    monkeypatch.setattr(processes, "_visible_gpus", lambda: 0)
    assert device_count("auto", "auto") == 1  # no GPU: Lightning falls back to one CPU process


@pytest.mark.parametrize(
    ("strategy", "wrapped"),
    [("auto", False), ("ddp", True), ("ddp_spawn", True), ("fsdp", True), (DDP, True), ("single_device", False)],
)
def test_distributed_strategy_names_the_wrapping_strategies(strategy, wrapped):
    assert distributed_strategy(config(strategy=strategy)) is wrapped


@pytest.mark.parametrize(
    ("trainer", "relaunched"),
    [
        ({"devices": [0]}, False),  # one device: nothing to relaunch (the compression checks agree)
        ({"devices": [0, 1]}, True),
        ({"devices": 2, "strategy": DDP}, True),
        ({"devices": 2, "strategy": SPAWN}, False),  # spawned workers never re-run the command
        ({"devices": 2, "strategy": "ddp_spawn"}, False),
        ({"devices": 1, "num_nodes": 2}, True),
    ],
)
def test_the_sweep_relaunches_exactly_the_multi_process_jobs(trainer, relaunched):
    assert relaunches_script(config(**trainer)) is relaunched


def test_compression_accepts_one_listed_device_and_refuses_several():
    one = OmegaConf.merge(config(devices=[0]), {"compression": {"prune": {"_target_": "x"}}})
    check_compression(one)
    two = OmegaConf.merge(config(devices=[0, 1]), {"compression": {"prune": {"_target_": "x"}}})
    with pytest.raises(ConfigError, match="compression runs in one process"):
        check_compression(two)
