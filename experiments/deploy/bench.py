"""make bench-deploy: the deploy targets on trained models, the variant chosen by the numbers, and a peer row.

    python experiments/deploy/bench.py [--quick]       # every run below, then experiments/deploy/results.json
    python experiments/deploy/bench.py --only fsdd_cnn # one run again, its entry in results.json replaced
    python experiments/deploy/bench.py --peer RUN_DIR  # the peer row alone, for a finished run

Each run is one `trimlab-train` process with `deploy=[inductor,onnxruntime,openvino]`: every variant of a run is
timed in that process, with cost.py's protocol, and its ratios are against that process's compiled fp32 model.
The peer row is one more process: a finished run's trained checkpoint quantized directly with ONNX Runtime's and
OpenVINO's (NNCF) own tools, as a user would without trimlab, timed beside the compiled fp32 model and trimlab's
deployed variant of the same run. The CPU model and torch's CPU capability are recorded beside the figures:
int8 and bf16 results flip between AVX2-only and VNNI/AMX CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent
TARGETS = "deploy=[inductor,onnxruntime,openvino]"
# name → the run's overrides; --quick shortens the fits (the deploy ratios do not depend on them).
RUNS = {
    "mnist_cnn": ["experiment=mnist_cnn", "deploy.objective=latency"],
    "mnist_prune_quantize": ["experiment=mnist_prune_quantize", "deploy.objective=latency", "deploy.tolerance_pt=1.0"],
    "sst2_transformer": ["experiment=sst2_transformer", "deploy.objective=throughput", "trainer.max_epochs=3"],
    "fsdd_cnn": ["experiment=fsdd_cnn", "deploy.objective=latency", "trainer.max_epochs=15"],
}
QUICK = ["trainer.max_epochs=1", "++trainer.limit_train_batches=50", "++compression.prune_structured.epochs=1"]


def train(name: str, overrides: list[str], quick: bool, out: Path) -> Path:
    shutil.rmtree(out / name, ignore_errors=True)  # the benchmark's own run dir of the last time
    args = [str(BIN / "trimlab-train"), *overrides, TARGETS, "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out / name}", *(QUICK if quick else [])]  # fmt: skip
    print("$", " ".join(args[1:]), flush=True)
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return out / name


def peer(run_dir: Path) -> dict:
    """The trained model quantized by each runtime's own tool, beside trimlab's deployed variant, one process."""
    import torch

    from trimlab.batches import first_test_inputs
    from trimlab.deploy import deployed, ledger
    from trimlab.deploy.base import Built, version
    from trimlab.deploy.inductor import Inductor
    from trimlab.deploy.ort import OnnxRuntime
    from trimlab.deploy.ov import OpenVino
    from trimlab.factory import build, load_run
    from trimlab.pipeline import deployable_backbone

    cfg, summary = load_run(run_dir)
    datamodule, _ = build(cfg, artifacts_from=run_dir)
    model = deployable_backbone(cfg, datamodule, str(run_dir / summary["checkpoint"])).eval()
    sample = first_test_inputs(datamodule)
    calibration = [batch[0] for _, batch in zip(range(16), datamodule.train_dataloader(), strict=False)]
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        context = {"scratch": Path(scratch) / "export", "calibration": calibration, "max_length": 512, "chunk": 64}
        for label, target, variant in [
            ("compiled fp32 (the baseline)", Inductor(), "fp32"),
            ("ONNX Runtime int8, its own quantizer (peer)", OnnxRuntime(), "int8"),
            ("OpenVINO int8, NNCF (peer)", OpenVino(), "int8"),
        ]:  # fmt: skip
            built = target.build(model, variant, sample, Path(scratch) / label[:8], context)
            rows[label] = ledger.entry(built, datamodule, sample, cfg.cost)
        manifest = deployed.read_manifest(run_dir)
        runner = deployed.load(run_dir, cfg, datamodule, manifest)
        files = [run_dir / "deployed" / name for name in manifest["files"]]
        chosen = Built(runner, files, 0.0, manifest["runtime"], version(manifest["runtime"]))
        rows[f"trimlab's choice: {manifest['target']}/{manifest['variant']}"] = ledger.entry(
            chosen, datamodule, sample, cfg.cost
        )
    base = rows["compiled fp32 (the baseline)"]
    for entry in rows.values():
        entry["latency_vs_baseline"] = round(base["latency_ms_p50"] / entry["latency_ms_p50"], 2)
        entry["throughput_vs_baseline"] = round(entry["throughput_samples_per_s"] / base["throughput_samples_per_s"], 2)
    return {"run_dir": str(run_dir), "threads": torch.get_num_threads(), "rows": rows}


def machine() -> dict:
    import torch

    from trimlab.report import cpu_capability, cpu_model

    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip


def run_record(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"run_dir": str(run_dir), "env": {k: summary["env"].get(k) for k in ("cpu", "cpu_capability")},
            "trained_acc": summary["deploy"]["trained_acc"], "deploy": summary["deploy"],
            "ledger": summary["cost"]["deploy"]}  # fmt: skip


def table(record: dict) -> str:
    lines = ["| variant | test acc | Δ pt | latency ms (×) | throughput /s (×) | size B |", "|---|---|---|---|---|---|"]
    for row in record["deploy"]["why"]:
        target, variant = row["variant"].split("/")
        found = record["ledger"][target][variant]
        if found.get("status") != "ok":
            lines.append(f"| {row['variant']} | unsupported: {found.get('reason')} | | | | |")
            continue
        ratio = found["vs_inductor"]
        mark = "**" if row["chosen"] else ""
        lines.append(
            f"| {mark}{row['variant']}{mark} | {found['test/acc']:.4f} | {row['acc_delta_pt']:+.2f} | "
            f"{found['latency_ms_p50']:.3f} ({ratio['latency']:.2f}×) | {found['throughput_samples_per_s']:,.0f} "
            f"({ratio['throughput']:.2f}×) | {found['size_bytes']:,} |"
        )
    return "\n".join(lines)


def peer_row(chained: Path) -> dict:
    """The peer row in a process of its own, as each run's figures are."""
    result = subprocess.run([sys.executable, __file__, "--peer", str(chained)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"peer row failed:\n{result.stderr[-3000:]}")
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for label, entry in found["rows"].items():
        print(f"{label}: acc {entry['test/acc']:.4f}, latency {entry['latency_ms_p50']:.3f} ms "
              f"({entry['latency_vs_baseline']}×), {entry['throughput_samples_per_s']:,.0f}/s "
              f"({entry['throughput_vs_baseline']}×)")  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short fits: checks the script, not the models")
    parser.add_argument("--peer", help="the peer row alone, for this finished run dir")
    parser.add_argument("--only", choices=list(RUNS), action="append", help="these runs again, the rest kept")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_deploy"))
    args = parser.parse_args()
    if args.peer:
        print(json.dumps(peer(Path(args.peer))))
        return
    out = Path(args.out)
    target = out / "results_quick.json" if args.quick else HERE / "results.json"  # quick figures stay out of git
    results = json.loads(target.read_text()) if args.only and target.is_file() else {"runs": {}}
    results["machine"] = machine()
    for name in args.only or RUNS:
        results["runs"][name] = run_record(train(name, RUNS[name], args.quick, out))
        print(f"\n### {name}\n\n{table(results['runs'][name])}\n", flush=True)
    if "mnist_prune_quantize" in (args.only or RUNS):
        results["peer"] = peer_row(out / "mnist_prune_quantize")
    target.write_text(json.dumps(results, indent=1) + "\n")
    print(target)


if __name__ == "__main__":
    main()
