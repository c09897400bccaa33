"""LitServe's own request path against trimlab's, side by side in one run: the digits model served with
`fast_queue=false` (LitServe's manager queues, its thread-pooled no-auth check, its answer queue) and with
`fast_queue=true` (the default: a pipe, the check awaited, answers over ZeroMQ), in alternation.

    python experiments/serving/queues.py              # 2 rounds, 10 s per level
    python experiments/serving/queues.py --rounds 3 --duration 15

Both get `batch_timeout_ms=0` at concurrency 1 (latency) and the default batching at concurrency 32.
Results: `queues.json` beside this file, with the CPU; the ratios are medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics

from bench import BIN, CASES, HERE, REPO, run, serve_and_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    from trimlab.report import cpu_capability, cpu_model

    run_dir = REPO / "outputs" / "bench-serve" / "queues"
    shutil.rmtree(run_dir, ignore_errors=True)
    run([str(BIN / "trimlab-train"), *CASES["digits"][0], "trainer.enable_progress_bar=false",
         f"hydra.run.dir={run_dir}"])  # fmt: skip
    rounds: dict[str, list[dict]] = {"litserve": [], "trimlab": []}
    for _ in range(args.rounds):
        for name, fast in (("litserve", "false"), ("trimlab", "true")):
            (calm,) = serve_and_load(run_dir, "deployed", [("1", 1)], args.duration, "batch_timeout_ms=0",
                                     f"fast_queue={fast}")  # fmt: skip
            (busy,) = serve_and_load(run_dir, "deployed", [("32", 1)], args.duration, f"fast_queue={fast}")
            rounds[name].append({"c1_p50_ms": calm["levels"][0]["latency_ms_p50"],
                                 "c32_requests_per_s": busy["levels"][0]["requests_per_s"]})  # fmt: skip

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[name])

    results = {
        "cpu": cpu_model(), "cpu_capability": cpu_capability(), "duration_s": args.duration, "rounds": rounds,
        "c32_requests_per_s: trimlab / litserve": round(median("trimlab", "c32_requests_per_s")
                                                        / median("litserve", "c32_requests_per_s"), 3),
        "c1_p50: trimlab / litserve": round(median("trimlab", "c1_p50_ms") / median("litserve", "c1_p50_ms"), 3),
    }  # fmt: skip
    (HERE / "queues.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
