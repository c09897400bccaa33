"""make bench-serve: trained runs behind trimlab-serve, loaded by trimlab-loadtest, in one benchmark run.

    python experiments/serving/bench.py                # digits: fp32 (inductor) and its deployed variant
    python experiments/serving/bench.py --all          # + MNIST fp32 vs pruned+int8 deployed, SST-2 transformer
    python experiments/serving/bench.py --duration 15  # seconds per concurrency level (default 10)

Each served model gets two servers, one after the other: a latency one (batch_timeout_ms=0: a request never
waits for others), loaded at concurrency 1, whose p50 minus the ledger's batch-1 latency is the server's
overhead; and the default one (max_batch_size=32, batch_timeout_ms=5), loaded with 64 inputs per request at
concurrency 8 (where the model's speed shows), then with one input per request at concurrency 1, 8 and 32 (the
figures its `cost.serving` keeps). Images go as base64 PNG files, as a client sends a picture
(`--image-format list` sends nested pixel lists, which cost the server more to parse than the small models cost
to run). Ratios are taken within this one run; the CPU model and torch's CPU capability are recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent
QUICK = ["trainer.max_epochs=1", "++trainer.limit_train_batches=50", "++compression.prune_structured.epochs=1"]
TARGETS = "deploy=[inductor,onnxruntime,openvino]"
# name → (training overrides, [(label, serve target)])
CASES = {
    "digits": (["trainer.max_epochs=5", "deploy=[inductor,onnxruntime]"],
               [("fp32 inductor", "inductor"), ("deployed", "deployed")]),
    "mnist_cnn": (["experiment=mnist_cnn", TARGETS, *QUICK], [("fp32 inductor", "inductor")]),
    "mnist_prune_quantize": (["experiment=mnist_prune_quantize", TARGETS, "deploy.tolerance_pt=1.0", *QUICK],
                             [("deployed", "deployed")]),
    "sst2_transformer": (["experiment=sst2_transformer", TARGETS, "deploy.objective=throughput", *QUICK],
                         [("fp32 onnxruntime", "onnxruntime/fp32"), ("deployed", "deployed")]),
}  # fmt: skip


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args)), flush=True)
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"},
                            **kwargs)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{result.stderr[-3000:]}")
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(server: subprocess.Popen, port: int, log_path: Path | None = None, limit_s: float = 300) -> None:
    """Until the server at `port` answers /health; its log's tail if it exits first or takes `limit_s`."""
    deadline = time.monotonic() + limit_s
    while server.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    tail = log_path.read_text()[-3000:] if log_path else ""
    raise SystemExit(f"the server on port {port} never answered /health (exit code {server.poll()}): {tail}")


def serve_and_load(run_dir: Path, target: str, loads: list[tuple[str, int]], duration: float, image_format: str,
                   *knobs: str) -> list:  # fmt: skip
    """Start a server, wait for /health, load it with each (concurrency levels, items per request), stop it with
    SIGTERM; each load test's JSON."""
    port = free_port()
    args = [str(BIN / "trimlab-serve"), f"run_dir={run_dir}", f"port={port}", f"target={target}", *knobs]
    print("$", " ".join(args[1:]), flush=True)
    log_path = run_dir / f"serve-{target.replace('/', '-')}.log"  # onnxruntime/fp32 names a file, not a folder
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(server, port, log_path)
        results = []
        for levels, items in loads:
            run([str(BIN / "trimlab-loadtest"), f"http://127.0.0.1:{port}", "--concurrency", levels,
                 "--items", str(items), "--duration", str(duration), "--image-format", image_format])  # fmt: skip
            results.append(json.loads((run_dir / "serve_bench.json").read_text()))
        return results
    finally:
        server.terminate()
        server.wait(120)
        log.close()


def measure(run_dir: Path, target: str, duration: float, image_format: str) -> dict:
    (quick,) = serve_and_load(run_dir, target, [("1", 1)], duration, image_format, "batch_timeout_ms=0")
    many, loaded = serve_and_load(run_dir, target, [("8", 64), ("1,8,32", 1)], duration, image_format)
    ledger = loaded["ledger"]
    by_level = {level["concurrency"]: level for level in loaded["levels"]}
    p50 = quick["levels"][0]["latency_ms_p50"]
    return {
        "variant": loaded["variant"], "runtime": loaded["runtime"], "ledger": ledger, "levels": loaded["levels"],
        "latency_server_c1": quick["levels"][0],
        "overhead_ms_c1": round(p50 - ledger["latency_ms_p50"], 3) if "latency_ms_p50" in ledger else None,
        "c32_vs_ledger_throughput": round(by_level[32]["requests_per_s"] / ledger["throughput_samples_per_s"], 4)
        if ledger.get("throughput_samples_per_s") else None,
        "usd_per_million_c32": by_level[32]["usd_per_million"],
        "items64_c8": many["levels"][0], "usd_per_million_items64": many["levels"][0]["usd_per_million"],
        "items64_vs_ledger_throughput": round(many["levels"][0]["predictions_per_s"]
                                              / ledger["throughput_samples_per_s"], 4)
        if ledger.get("throughput_samples_per_s") else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="MNIST and SST-2 too (needs TRIMLAB_DATA)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--image-format",
        choices=("png", "list"),
        default="png",
        help="how the load test sends images: base64 PNG files (default) or nested pixel lists",
    )
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench-serve"))
    args = parser.parse_args()
    from trimlab.report import cpu_capability, cpu_model

    out = Path(args.out)
    results = {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "duration_s": args.duration,
               "image_format": args.image_format, "cases": {}}  # fmt: skip
    for name, (overrides, served) in CASES.items():
        if name != "digits" and not args.all:
            continue
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run([str(BIN / "trimlab-train"), *overrides, "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"])
        for label, target in served:
            results["cases"][f"{name} {label}"] = measure(run_dir, target, args.duration, args.image_format)
    cases = results["cases"]
    for base, small in (("digits fp32 inductor", "digits deployed"),
                        ("mnist_cnn fp32 inductor", "mnist_prune_quantize deployed"),
                        ("sst2_transformer fp32 onnxruntime", "sst2_transformer deployed")):  # fmt: skip
        if base in cases and small in cases:
            for key in ("usd_per_million_c32", "usd_per_million_items64"):
                results[f"{key}: {small} / {base}"] = round(cases[small][key] / cases[base][key], 4)
    path = HERE / ("results.json" if args.all else "results_digits.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "cases"}, indent=2))
    for name, case in cases.items():
        levels = ", ".join(f"c{lv['concurrency']} {lv['requests_per_s']} req/s p50 {lv['latency_ms_p50']} "
                           f"p99 {lv['latency_ms_p99']}" for lv in case["levels"])  # fmt: skip
        print(f"{name} ({case['variant']}): {levels}; overhead c1 {case['overhead_ms_c1']} ms; "
              f"c32/ledger {case['c32_vs_ledger_throughput']}; ${case['usd_per_million_c32']}/M; 64 items/request "
              f"c8: {case['items64_c8']['predictions_per_s']} predictions/s, "
              f"${case['usd_per_million_items64']}/M")  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
