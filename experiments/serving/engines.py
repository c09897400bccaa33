"""trimlab-serve's request paths side by side in one run, the digits model served in alternation by:

- `litserve`: `engine=litserve fast_queue=false`, LitServe as it comes (manager queues, its thread-pooled
  no-auth check, its answer queue), the model in a worker process;
- `litserve_pipe`: `engine=litserve` (a pipe instead of the manager queues, the check awaited, answers over
  ZeroMQ), the model still in a worker process;
- `fastapi`: `engine=fastapi` (the default), FastAPI + uvicorn with the model in the HTTP process.

    python experiments/serving/engines.py              # 2 rounds, 10 s per level
    python experiments/serving/engines.py --rounds 3 --duration 15

Each gets `batch_timeout_ms=0` at concurrency 1 (latency) and the default batching at concurrency 32.
Results: `engines.json` beside this file, with the CPU; the ratios (against `litserve`) are medians over the
rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics

from bench import BIN, CASES, HERE, REPO, run, serve_and_load

ENGINES = {
    "litserve": ["engine=litserve", "fast_queue=false"],
    "litserve_pipe": ["engine=litserve", "fast_queue=true"],
    "fastapi": ["engine=fastapi"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    from trimlab.report import cpu_capability, cpu_model

    run_dir = REPO / "outputs" / "bench-serve" / "engines"
    shutil.rmtree(run_dir, ignore_errors=True)
    run([str(BIN / "trimlab-train"), *CASES["digits"][0], "trainer.enable_progress_bar=false",
         f"hydra.run.dir={run_dir}"])  # fmt: skip
    rounds: dict[str, list[dict]] = {name: [] for name in ENGINES}
    for _ in range(args.rounds):
        for name, knobs in ENGINES.items():
            (calm,) = serve_and_load(run_dir, "deployed", [("1", 1)], args.duration, "batch_timeout_ms=0", *knobs)
            (busy,) = serve_and_load(run_dir, "deployed", [("32", 1)], args.duration, *knobs)
            rounds[name].append({"c1_p50_ms": calm["levels"][0]["latency_ms_p50"],
                                 "c32_requests_per_s": busy["levels"][0]["requests_per_s"]})  # fmt: skip

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[name])

    results = {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "duration_s": args.duration,
               "rounds": rounds}  # fmt: skip
    for name in ENGINES:
        if name != "litserve":
            for key in ("c32_requests_per_s", "c1_p50_ms"):
                results[f"{key}: {name} / litserve"] = round(median(name, key) / median("litserve", key), 3)
    (HERE / "engines.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
