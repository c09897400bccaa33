"""The cost ledger: measured, never estimated where a measurement is possible.

Train time and samples come from a callback that watches the fit; parameters, size, latency, throughput and
FLOPs are measured on the deployable backbone after test.
"""

from __future__ import annotations

import contextlib
import io
import resource
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from trimlab import schema
from trimlab.batches import forward, take, to_device
from trimlab.errors import ConfigError
from trimlab.schema import parse_target


class RunClock(pl.Callback):
    """Train wall time, samples seen, and when val accuracy first reached a fraction of its best."""

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self.train_time_s = 0.0
        self.samples = 0
        self.val_history: list[tuple[float, float]] = []  # (train seconds so far, metric)
        self.step_times: list[float] = []  # seconds per training batch, this process's part of the run
        self.first_step_unix: float | None = None  # wall clock at the end of the first optimizer step
        self._started: float | None = None
        self._step_started = 0.0
        self.last_loss: torch.Tensor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_times.append(time.perf_counter() - self._step_started)
        if isinstance(outputs, dict) and "loss" in outputs:
            self.last_loss = outputs["loss"].detach()
        if self.first_step_unix is None and not self.train_time_s:
            self.first_step_unix = time.time()
        target = batch[1]
        self.samples += int(target.shape[0]) * trainer.world_size

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and self._started is not None and not trainer.sanity_checking:
            self.val_history.append((self.elapsed(), float(value)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_time_s = self.elapsed()
        self._started = None

    def elapsed(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.train_time_s + running

    def time_to_target(self, fraction: float, target: Any = None) -> float | None:
        """Train seconds until the monitored metric first reached `target` (`val/acc:0.98`, absolute; None when
        it never did), or without one, `fraction` of its best value."""
        if not self.val_history:
            return None
        if target:
            _, value, lower = parse_target(target)
            reached = (
                seconds for seconds, metric in self.val_history if (metric <= value if lower else metric >= value)
            )
            return next(reached, None)
        goal = fraction * max(metric for _, metric in self.val_history)
        return next(seconds for seconds, metric in self.val_history if metric >= goal)

    def curve(self) -> list[list[float]]:
        """Wall seconds of training against the monitored val metric, at each validation."""
        return [[round(seconds, 3), round(metric, 5)] for seconds, metric in self.val_history]

    # Carried in checkpoints, so a resumed run reports the whole run's time and samples.
    def state_dict(self) -> dict[str, Any]:
        return {"train_time_s": self.elapsed(), "samples": self.samples, "val_history": self.val_history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_time_s = float(state_dict["train_time_s"])
        self.samples = int(state_dict["samples"])
        self.val_history = [tuple(item) for item in state_dict["val_history"]]


def target_facts(cfg: Any, clock: RunClock) -> dict[str, Any]:
    """Which target time_to_target_s used, and the whole val curve it was read from."""
    target = cfg.get("target")
    if target:
        metric, value, lower = parse_target(target)
        used = f"{metric} {'<=' if lower else '>='} {value:g}"
    else:
        used = f"{clock.monitor} >= {cfg.target_fraction:g} x its best"
    return {"time_to_target_s": clock.time_to_target(cfg.target_fraction, target), "target": used,
            "val_curve": clock.curve()}  # fmt: skip


@torch.inference_mode()
def time_forward(model: nn.Module, inputs, warmup: int, repeats: int, precision: Any = None) -> list[float]:
    """Seconds per forward pass, `repeats` times after `warmup` untimed passes, in the run's precision."""
    context = precision.forward_context if precision is not None else contextlib.nullcontext
    if precision is not None:
        inputs = precision.convert_input(inputs)
    with context():
        for _ in range(warmup):
            forward(model, inputs)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(model, inputs)
            timings.append(time.perf_counter() - start)
    return timings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def serialized_size(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def count_flops(model: nn.Module, inputs) -> int | None:
    from lightning.fabric.utilities.throughput import measure_flops

    try:
        return int(measure_flops(model, lambda: forward(model, inputs)))
    except Exception:  # noqa: BLE001 - an op without a FLOP formula must not fail the run
        return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def inference_cost(
    model: nn.Module, sample_inputs, cfg: Any, precision: Any = None, inductor: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What serving the model costs: size, parameters, FLOPs, latency at batch 1 and throughput at batch 64.

    `cfg.compile` adds the same timings for the `torch.compile`d model (inductor freezing: weights as constants),
    the form a compressed model is deployed in; eager timings stay beside them, so that what compile itself gains
    is never credited to a compression stage. The serving figures of `cfg.figures` are measured here too."""
    one = take(sample_inputs, cfg.latency_batch_size)
    many = take(sample_inputs, cfg.throughput_batch_size)
    eager_latency = time_forward(model, one, cfg.latency_warmup, cfg.latency_repeats, precision)
    eager_throughput = time_forward(model, many, 3, cfg.throughput_repeats, precision)
    flops = count_flops(model, one)
    result = {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "nonzero_params": int(sum(int(torch.count_nonzero(p)) for p in model.parameters())),
        "size_bytes": serialized_size(model),
        "flops_per_sample": flops // cfg.latency_batch_size if flops else None,
        "latency_ms_p50": ms(statistics.median(eager_latency)),
        "latency_ms_p95": ms(percentile(eager_latency, 0.95)),
        "latency_batch_size": cfg.latency_batch_size,
        "latency_repeats": cfg.latency_repeats,
        "throughput_samples_per_s": round(cfg.throughput_batch_size / statistics.median(eager_throughput), 1),
        "throughput_batch_size": cfg.throughput_batch_size,
        "threads": torch.get_num_threads(),
    }
    result["latency_ms_p50_eager"] = result["latency_ms_p50"]
    result["throughput_samples_per_s_eager"] = result["throughput_samples_per_s"]
    result.update(added_cost(model, sample_inputs, cfg, "serving"))
    if cfg.get("compile") is True:  # "auto": compiled when the run compresses (see compression)
        try:
            result.update(compiled_timings(model, one, many, cfg, precision, inductor or {}))
        except Exception as err:  # noqa: BLE001 - a model compile cannot handle is still measured eager
            result.update(compiled=False, compile_error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    return result


def compiled_timings(model: nn.Module, one, many, cfg: Any, precision: Any, inductor: dict) -> dict[str, Any]:
    """Latency and throughput of `torch.compile(model)` with inductor freezing, and the compile time apart.

    Freezing (weights folded into the graph as constants) is what turns int8 into a CPU speedup; the setting is
    scoped to this measurement, as are `inductor` settings (a quantizer's graph pass). Each batch size compiles
    once (static shapes), timed on its first call."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with inductor_config.patch(freezing=True, **inductor), torch.no_grad():
        compiled = torch.compile(model, dynamic=False)  # one graph per batch size: static shapes
        compile_s = 0.0
        for inputs in (one, many):
            start = time.perf_counter()
            forward(compiled, inputs)
            compile_s += time.perf_counter() - start
        latency = time_forward(compiled, one, cfg.latency_warmup, cfg.latency_repeats, precision)
        throughput = time_forward(compiled, many, 3, cfg.throughput_repeats, precision)
    torch._dynamo.reset()
    return {
        "latency_ms_p50": ms(statistics.median(latency)),
        "latency_ms_p95": ms(percentile(latency, 0.95)),
        "throughput_samples_per_s": round(cfg.throughput_batch_size / statistics.median(throughput), 1),
        "compile_s": round(compile_s, 2),
        "compiled": True,
    }


def added_cost(model: nn.Module, sample_inputs, cfg: Any, phase: str) -> dict[str, Any]:
    """The values of the run's own cost figures (`cost.figures`, see docs/extending.md) of one phase: each
    figure's measure function called with the model and the first test batch."""
    entries = cfg.get("figures") or []
    schema.added(entries)  # a declaration the summary schema cannot read back fails here, with its index
    from hydra.utils import instantiate

    values = {}
    for index, entry in enumerate(entries):
        figure = instantiate(entry)
        if not isinstance(figure, schema.Figure):
            raise ConfigError(
                f"cost.figures[{index}] made a {type(figure).__name__}, not a cost figure; "
                "use _target_: trimlab.schema.Figure (or a subclass) with name, unit, better, phase and measure"
            )
        if figure.phase == phase:
            values[figure.name] = figure.compute(model, sample_inputs)
    return values


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def measure(
    model: nn.Module,
    sample_inputs,
    clock: RunClock,
    cfg: Any,
    device: torch.device,
    precision: Any = None,
    peak_mem_per_process: list[float] | None = None,
    inference: bool = True,
) -> dict[str, Any]:
    """The cost block of the summary; `cfg` is the run's `cost` config, `precision` Lightning's plugin.
    `inference=False` leaves out serving cost (a compressed run measures it per stage instead). The training
    figures of `cfg.figures` are measured here, on the deployable model."""
    model = model.eval().to(device)
    if precision is not None:  # bf16-true/16-true: the deployed weights in the dtype the run trained and tested in
        model = precision.convert_module(model)
    sample_inputs = to_device(sample_inputs, device)
    peaks = peak_mem_per_process or [peak_memory_mb(device)]
    hours = clock.train_time_s / 3600
    return {
        **(inference_cost(model, sample_inputs, cfg, precision) if inference else {}),
        "train_time_s": round(clock.train_time_s, 3),
        "train_samples": clock.samples,
        "train_samples_per_s": round(clock.samples / clock.train_time_s, 1) if clock.train_time_s else None,
        **target_facts(cfg, clock),
        # The first step carries one-off costs (torch.compile, lazy init); the median is the steady state.
        "first_step_s": round(clock.step_times[0], 4) if clock.step_times else None,
        "step_time_ms_median": round(statistics.median(clock.step_times[1:]) * 1e3, 4)
        if len(clock.step_times) > 1
        else None,
        "first_step_unix": clock.first_step_unix,
        "peak_mem_mb": round(peaks[0], 1),
        "peak_mem_mb_total": round(sum(peaks), 1),
        "processes": len(peaks),
        "price_per_hour": cfg.price_per_hour,
        "price_usd": round(hours * cfg.price_per_hour, 8),
        **added_cost(model, sample_inputs, cfg, "training"),
    }
