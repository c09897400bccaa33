"""The cheapest variant whose test accuracy is within `tolerance_pt` points of the trained model's, by the run's
objective, with the table of candidates that says why; and the chosen artifact written into `deployed/`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from trimlab.deploy.base import TEXT_INPUTS, Built, version
from trimlab.deploy.deployed import FOLDER, MANIFEST
from trimlab.errors import ConfigError

# objective → (ledger key, the better direction)
OBJECTIVES = {"latency": ("latency_ms_p50", "lower"), "throughput": ("throughput_samples_per_s", "higher"),
              "cost_per_million": ("usd_per_million", "lower")}  # fmt: skip
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "openvino")


def choose(ledger: dict[str, dict], trained_acc: float, objective: str, tolerance_pt: float) -> dict[str, Any]:
    """`summary["deploy"]`: the chosen `target/variant` (None when no variant is within tolerance) and `why`,
    one row per variant, the chosen one first among the eligible."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"deploy.objective={objective} is unknown; use one of {', '.join(OBJECTIVES)}")
    key, better = OBJECTIVES[objective]
    rows = []
    for target, variants in ledger.items():
        for variant, found in variants.items():
            row: dict[str, Any] = {"variant": f"{target}/{variant}", "status": found.get("status")}
            if found.get("status") == "ok":
                delta = round(100 * (found["test/acc"] - trained_acc), 4)
                row.update({key: found[key], "test/acc": found["test/acc"], "acc_delta_pt": delta,
                            "eligible": delta >= -tolerance_pt})  # fmt: skip
            else:
                row.update(eligible=False, reason=found.get("reason"))
            rows.append(row)
    eligible = [row for row in rows if row["eligible"]]
    sign = 1 if better == "lower" else -1
    eligible.sort(key=lambda row: sign * row[key])
    chosen = eligible[0]["variant"] if eligible else None
    others = [row for row in rows if row["variant"] != chosen]
    why = ([eligible[0]] if eligible else []) + sorted(others, key=lambda r: (not r["eligible"], r["variant"]))
    for row in why:
        row["chosen"] = row["variant"] == chosen
    return {"chosen": chosen, "objective": objective, "key": key, "tolerance_pt": tolerance_pt,
            "trained_acc": trained_acc, "why": why}  # fmt: skip


def input_spec(example: Any) -> dict[str, Any]:
    """Names, dtypes and shapes of the served inputs; None marks a dynamic dimension (batch, sequence)."""
    if isinstance(example, dict):
        return {key: {"dtype": str(example[key].dtype).removeprefix("torch."), "shape": [None, None]}
                for key in TEXT_INPUTS}  # fmt: skip
    return {"input": {"dtype": str(example.dtype).removeprefix("torch."), "shape": [None, *example.shape[1:]]}}


def write_deployed(run_dir: Path, chosen: str, built: Built, entry: dict, example: Any, class_names: list) -> dict:
    """Copy the chosen variant's files and a manifest into `<run_dir>/deployed/`, atomically: a temp dir renamed
    into place, so a crash never leaves a half-written deployment. Returns the manifest."""
    from trimlab.report import write_json

    run_dir = Path(run_dir)
    scratch, final = run_dir / f"{FOLDER}.tmp", run_dir / FOLDER
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for path in built.files:
        shutil.copyfile(path, scratch / path.name)
    target, variant = chosen.split("/")
    manifest = {
        "target": target, "runtime": built.runtime, "version": built.version, "variant": variant,
        "files": [path.name for path in built.files], "settings": built.settings, "inputs": input_spec(example),
        "class_names": list(class_names), "packages": {name: version(name) for name in PACKAGES if version(name)},
        "metrics": {key: value for key, value in entry.items() if key.startswith("test/")},
    }  # fmt: skip
    write_json(scratch / MANIFEST, manifest)
    shutil.rmtree(final, ignore_errors=True)
    scratch.replace(final)
    return manifest
