"""The summary schema: every metric and cost key of summary.json, declared once.

Each figure says its unit, which direction is better, its phase (measured on the fit or on the served model),
whether an exporting stage carries it over from the stage before (a quantized graph hides its parameters), and
where it is shown: the headline metrics (trimlab-eval's check), the per-model records of a compressed run
(`stage`) and of a semi-supervised run's first round (`round1`), the run's closing table (`report`), the columns
of sweep summaries and of trimlab-compare's files (`compared`), and the few of those that fit trimlab-compare's
terminal table (`console`; a cost figure a run adds itself is shown there when `compared`).
`method` marks the settings serving cost was measured with: runs that differ there are not comparable.

Everything that used to keep its own list of keys derives it here. A cost figure added from outside the package
(`cost.figures` in the config, see docs/extending.md) is a `Figure` too, read back from the run's saved config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from trimlab.errors import ConfigError

BETTER = ("higher", "lower", "none")
PHASES = ("training", "serving")


@dataclass(frozen=True)
class Figure:
    """One key of the summary's `metrics` or `cost` block. `measure` is set only for a figure added in the
    config: a function `(model, inputs) -> number`, or its dotted path, called where cost is measured."""

    name: str
    unit: str = ""
    better: str = "none"
    phase: str = "serving"
    carried: bool = False
    headline: bool = False
    stage: bool = False
    round1: bool = False
    report: bool = False
    compared: bool = False
    console: bool = False
    method: bool = False
    where: str = "cost"
    measure: Any = None

    def __post_init__(self) -> None:
        if self.better not in BETTER or self.phase not in PHASES or self.where not in ("metrics", "cost"):
            raise ConfigError(
                f"figure {self.name!r}: better={self.better}, phase={self.phase}, where={self.where} is not a valid "
                f"declaration; use better in {'/'.join(BETTER)} and phase in {'/'.join(PHASES)}"
            )

    def compute(self, model: Any, inputs: Any) -> Any:
        """The figure's value for this model, measured on example inputs (the first test batch)."""
        function = self.measure
        if isinstance(function, str):
            from hydra.utils import get_method

            function = get_method(function)
        if not callable(function):
            raise ConfigError(f"cost figure {self.name!r} has no measure function; set measure: <module>.<function>")
        return function(model, inputs)


def _metric(name: str, unit: str = "", better: str = "higher", **flags: Any) -> Figure:
    return Figure(name, unit, better, where="metrics", **flags)


SCORE = {"headline": True, "compared": True, "report": True}  # a test score shown wherever runs are scored
SHOWN = {"compared": True, "console": True}
BUILTIN: tuple[Figure, ...] = (
    _metric("test/acc", "fraction", stage=True, round1=True, console=True, **SCORE),
    _metric("test/precision_macro", "fraction", **SCORE),
    _metric("test/recall_macro", "fraction", **SCORE),
    _metric("test/f1_macro", "fraction", stage=True, round1=True, console=True, **SCORE),
    _metric("test/auroc_macro", "fraction", stage=True, round1=True, console=True, **SCORE),
    _metric("test/loss", "nats", "lower", round1=True, compared=True),
    _metric("test_samples", "samples", "none"),
    # The same model on the validation split: what a search's objective and constraints read (test is reported).
    _metric("val/acc", "fraction", compared=True),
    _metric("val/loss", "nats", "lower"),
    _metric("train/loss_final", "nats", "lower", phase="training"),
    # Serving: measured on the deployable model after test, and for a compressed run after each stage.
    Figure("params", "", "lower", carried=True, report=True, **SHOWN),
    Figure("trainable_params", "", "none", carried=True),
    Figure("nonzero_params", "", "lower", carried=True, compared=True),
    Figure("size_bytes", "B", "lower", report=True, **SHOWN),
    Figure("weights_bytes", "B", "lower"),
    Figure("sparse_size_bytes", "B", "lower"),
    Figure("latency_ms_p50", "ms", "lower", report=True, **SHOWN),
    Figure("latency_ms_p95", "ms", "lower", report=True),
    Figure("latency_ms_p50_eager", "ms", "lower", compared=True),
    Figure("throughput_samples_per_s", "/s", "higher", report=True, **SHOWN),
    Figure("throughput_samples_per_s_eager", "/s", "higher"),
    Figure("compile_s", "s", "lower"),
    Figure("flops_per_sample", "FLOP", "lower", carried=True, compared=True),
    Figure("latency_batch_size", "samples", method=True),
    Figure("throughput_batch_size", "samples", method=True),
    Figure("threads", "", method=True),
    Figure("compiled", "", method=True),
    Figure("compile_error"),
    Figure("latency_repeats"),
    Figure("precision"),
    # Training: measured on the fit; a compressed run keeps the trained model's.
    Figure("train_time_s", "s", "lower", "training", report=True, **SHOWN),
    Figure("train_samples", "samples", phase="training"),
    Figure("time_to_target_s", "s", "lower", "training", **SHOWN),
    Figure("target", phase="training"),  # the target time_to_target_s was read against
    Figure("val_curve", phase="training"),  # [train seconds, val metric] at each validation
    Figure("compile_speedup", "x", "higher", "training"),  # model.compile: eager / compiled training step time
    Figure("train_samples_per_s", "/s", "higher", "training", report=True, compared=True),
    Figure("first_step_s", "s", "lower", "training"),
    Figure("step_time_ms_median", "ms", "lower", "training"),
    Figure("first_step_unix", "s", phase="training"),
    Figure("peak_mem_mb", "MB", "lower", "training", report=True, compared=True),
    Figure("peak_mem_mb_total", "MB", "lower", "training"),
    Figure("processes", "", phase="training"),
    Figure("price_per_hour", "$/h", phase="training"),
    Figure("price_usd", "$", "lower", "training", report=True, **SHOWN),
    Figure("stage_time_s", "s", "lower", "training"),
    Figure("compression_time_s", "s", "lower", "training"),
)
# Keys of the two blocks that hold records rather than figures: reports, per-class tables, per-stage ledgers.
RECORDS = {"metrics": ("sklearn", "per_class", "confusion_matrix", "trained", "baseline", "after"),
           "cost": ("baseline", "after", "deploy")}  # fmt: skip


def added(entries: Iterable[Any] | None) -> tuple[Figure, ...]:
    """The cost figures a run's `cost.figures` declares, as schema entries (measure functions stay unresolved:
    reading a run back needs no import of the user's module)."""
    known = {f.name for f in BUILTIN}
    out = []
    for index, entry in enumerate(entries or []):
        entry = dict(entry.items()) if hasattr(entry, "items") else {}
        if not entry.get("name"):
            raise ConfigError(f"cost.figures[{index}] has no name; declare name, unit, better, phase and measure")
        if entry["name"] in known:
            raise ConfigError(f"cost.figures[{index}]: {entry['name']!r} is a built-in cost key; pick another name")
        declared = {f.name: entry[f.name] for f in fields(Figure) if f.name in entry}
        out.append(replace(Figure(**declared), where="cost"))
    return tuple(out)


def figures(entries: Iterable[Any] | None = None) -> tuple[Figure, ...]:
    """The built-in figures, then those a run's `cost.figures` adds."""
    return BUILTIN + added(entries)


def names(entries: Iterable[Any] | None = None, **wanted: Any) -> tuple[str, ...]:
    """Names of the figures whose fields equal `wanted`, e.g. names(where="metrics", headline=True)."""
    return tuple(f.name for f in figures(entries) if all(getattr(f, k) == v for k, v in wanted.items()))


def find(name: str, known: Iterable[Figure] = BUILTIN) -> Figure | None:
    return next((f for f in known if f.name == name), None)


def declared(summary: dict[str, Any]) -> list[Any]:
    """The `cost.figures` entries of the config a run saved in its summary."""
    return list(((summary.get("config") or {}).get("cost") or {}).get("figures") or [])


def measurement(summary: dict[str, Any]) -> str | None:
    """How a run's serving cost was measured, in one line (None when it has none): the cost settings marked
    `method` (batch sizes, threads, compiled or eager), the CPU's capability and the device kind. Runs whose
    lines differ timed their models differently: their latencies do not compare."""
    cost, env = summary.get("cost") or {}, summary.get("env") or {}
    if cost.get("latency_ms_p50") is None:
        return None
    settings = {key: cost.get(key) for key in names(where="cost", method=True)}
    settings["compiled"] = bool(settings.get("compiled"))  # absent: compile was off, the timings are eager
    device = str(env.get("device") or "unknown")
    # The CPU model itself is in env.cpu; what changes timings on the same machine kind is its capability.
    settings.update(cpu_capability=env.get("cpu_capability"), device="cpu" if device.startswith("cpu") else device)
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def parse_target(target: Any) -> tuple[str, float, bool]:
    """`val/acc:0.98` (or `val/acc=0.98`, or `{val/acc: 0.98}`): the val metric, the value it must reach, and
    whether lower is better (a loss)."""
    if isinstance(target, Mapping) and len(target) == 1:
        target = "{}:{}".format(*next(iter(target.items())))
    metric, _, value = str(target).replace("=", ":", 1).rpartition(":")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not metric.startswith("val/") or number is None:
        raise ConfigError(f"cost.target={target} is not <val metric>:<value>; e.g. cost.target=val/acc:0.98")
    return metric, number, metric.endswith("loss")
